"""SAM2 in OpenVINO: the image encoder, prompt encoder and mask decoder IRs in SAM2ImagePredictor give the torch
predictor's masks and scores on the embedded model (qsam2_mini), for every kind of prompt the predictor takes; the
memory encoder and memory attention IRs give SAM2's torch modules' outputs, and SAM2VideoPredictor with all five
IRs tracks like the torch predictor."""

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("nncf")
ov = pytest.importorskip("openvino")

from qsam2_ext.integrations import nncf as qn  # noqa: E402
from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, build_model, default_checkpoint, image_predictor  # noqa: E402

PROMPTS = {  # on a 256x256 photo (skimage's astronaut, every second pixel)
    "point, multimask": dict(point_coords=np.array([[100, 75]]), point_labels=np.array([1])),
    "two points": dict(point_coords=np.array([[100, 75], [150, 50]]), point_labels=np.array([1, 0]),
                       multimask_output=False),
    "box": dict(box=np.array([50, 25, 200, 225]), multimask_output=False),
    "box and point": dict(box=np.array([50, 25, 200, 225]), point_coords=np.array([[100, 75]]),
                          point_labels=np.array([1])),
    "two boxes (batched)": dict(box=np.array([[50, 25, 200, 225], [25, 100, 150, 250]]), multimask_output=False),
}


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    assert union > 0, "empty masks: the prompt tests nothing"
    return np.logical_and(a, b).sum() / union


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    from skimage import data

    model = build_model(DEFAULT_MODEL_CONFIG, default_checkpoint()).eval()
    folder = str(tmp_path_factory.mktemp("sam2_ir"))
    ov_model = qn.openvino_sam2(copy.deepcopy(model), folder, compress_to_fp16=False,
                                config={"INFERENCE_PRECISION_HINT": "f32"})
    image = data.astronaut()[::2, ::2].copy()  # 256x256 RGB
    pair = image_predictor(model), image_predictor(ov_model)
    for p in pair:
        p.set_image(image)
    return pair, folder


def test_three_irs_with_static_image_and_dynamic_prompts(predictors):
    (_, ov_predictor), folder = predictors
    assert isinstance(ov_predictor.model.image_encoder, qn.OpenVINOImageEncoder)
    core = ov.Core()
    encoder = core.read_model(f"{folder}/image_encoder.xml")
    assert encoder.inputs[0].get_partial_shape().is_static and list(encoder.inputs[0].shape) == [1, 3, 256, 256]
    prompt = core.read_model(f"{folder}/prompt_encoder.xml")
    assert prompt.inputs[0].get_partial_shape().is_dynamic  # (B, N, 2): prompts vary


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_masks_and_scores_match_the_torch_predictor(predictors, prompt):
    (torch_predictor, ov_predictor), _ = predictors
    with torch.no_grad():
        expected, expected_scores, expected_low = torch_predictor.predict(**PROMPTS[prompt])
        got, scores, low = ov_predictor.predict(**PROMPTS[prompt])
    assert got.shape == expected.shape and scores.shape == expected_scores.shape
    assert _iou(got, expected) > 0.999
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    np.testing.assert_allclose(low, expected_low, atol=1e-3 * np.abs(expected_low).max())


def test_mask_input_prompt_matches(predictors):
    """A previous low-resolution mask as the prompt (the dense embedding's mask branch)."""
    (torch_predictor, ov_predictor), _ = predictors
    kw = dict(point_coords=np.array([[200, 150]]), point_labels=np.array([1]), multimask_output=False)
    with torch.no_grad():
        _, _, low = torch_predictor.predict(**kw)
        assert not np.allclose(torch_predictor.predict(**kw, mask_input=low)[2], low)  # the mask changes the result
        expected, expected_scores, _ = torch_predictor.predict(**kw, mask_input=low)
        got, scores, _ = ov_predictor.predict(**kw, mask_input=low)
    assert _iou(got, expected) > 0.999
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)


@pytest.mark.parametrize("frames,pointers,objects", [(1, 4, 1), (3, 12, 2), (7, 64, 3), (2, 0, 1)])
def test_memory_irs_match_torch_for_any_memory_length(predictors, frames, pointers, objects):
    """Memory attention with dynamic memory length (spatial memory frames + object-pointer tokens, which SAM2 does
    not rotate) and memory encoder with any number of objects, against SAM2's torch modules."""
    (torch_predictor, ov_predictor), folder = predictors
    reference, model = torch_predictor.model, ov_predictor.model
    assert isinstance(model.memory_attention, qn.OpenVINOMemoryAttention)
    shape = ov.Core().read_model(f"{folder}/memory_attention.xml").inputs[2].get_partial_shape()
    assert shape[0].is_dynamic and shape[1].is_dynamic  # memory tokens and objects
    g = torch.Generator().manual_seed(frames)
    n, c, mem = (model.image_size // 16) ** 2, reference.hidden_dim, reference.mem_dim
    curr, curr_pos = torch.randn(n, objects, c, generator=g), torch.randn(n, objects, c, generator=g)
    memory, memory_pos = (torch.randn(frames * n + pointers, objects, mem, generator=g) for _ in range(2))
    with torch.no_grad():
        expected = reference.memory_attention([curr], memory, [curr_pos], memory_pos, num_obj_ptr_tokens=pointers)
    got = model.memory_attention([curr], memory, [curr_pos], memory_pos, num_obj_ptr_tokens=pointers)
    assert got.shape == expected.shape and float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    pix_feat = torch.randn(objects, c, model.image_size // 16, model.image_size // 16, generator=g)
    masks = 10 * torch.randn(objects, 1, model.image_size, model.image_size, generator=g)
    for skip in (True, False):
        with torch.no_grad():
            want = reference.memory_encoder(pix_feat, masks, skip_mask_sigmoid=skip)
        have = model.memory_encoder(pix_feat, masks, skip_mask_sigmoid=skip)
        for o, e in ((have["vision_features"], want["vision_features"]),
                     (have["vision_pos_enc"][0], want["vision_pos_enc"][0])):
            assert o.shape == e.shape and float((o - e).abs().max()) < 1e-4 * float(e.abs().max()), skip


@pytest.mark.slow
def test_video_predictor_with_the_irs_tracks_like_torch(tmp_path):
    """SAM2's video predictor with the five IRs (image encoder, prompt encoder, mask decoder, memory encoder,
    memory attention), two objects (one image embedding per object in the mask decoder): the same masks on every
    frame as the torch predictor."""
    from PIL import Image
    from skimage import data

    from qsam2_ext.sam2.video import build_video_predictor

    frames = tmp_path / "frames"
    frames.mkdir()
    image = data.astronaut()[::2, ::2]
    for i in range(5):  # frame 4 attends to 4 memory frames and their object pointers
        Image.fromarray(np.roll(image, 6 * i, axis=1)).save(frames / f"{i:05d}.jpg")
    reference = build_video_predictor(DEFAULT_MODEL_CONFIG, default_checkpoint()).eval()
    ov_predictor = qn.openvino_sam2(copy.deepcopy(reference), str(tmp_path / "ir"), compress_to_fp16=False,
                                    config={"INFERENCE_PRECISION_HINT": "f32"})
    assert isinstance(ov_predictor.memory_encoder, qn.OpenVINOMemoryEncoder)
    assert isinstance(ov_predictor.memory_attention, qn.OpenVINOMemoryAttention)
    masks = []
    for predictor in (reference, ov_predictor):
        with torch.inference_mode():
            state = predictor.init_state(video_path=str(frames))
            predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([[100, 75]], np.float32),
                                            labels=np.array([1], np.int32))
            predictor.add_new_points_or_box(state, frame_idx=0, obj_id=2, box=np.array([25, 100, 150, 250],
                                                                                       np.float32))
            masks.append({f: (m > 0).numpy() for f, _, m in predictor.propagate_in_video(state)})
    assert sorted(masks[0]) == sorted(masks[1]) == list(range(5))
    for frame, expected in masks[0].items():
        for obj in range(2):
            assert _iou(masks[1][frame][obj], expected[obj]) > 0.999, (frame, obj)


# --- Q-SAM2 memory modules (quantize_memory): calibrated on the memory calls of the torch video predictor ----------

def _track(predictor, frames_dir, boxes):
    """Masks ``{frame: (objects, H, W) bool}`` of ``predictor`` tracking ``boxes`` (obj id -> box) from frame 0."""
    with torch.inference_mode():
        state = predictor.init_state(video_path=frames_dir)
        for obj, box in boxes.items():
            predictor.add_new_points_or_box(state, frame_idx=0, obj_id=obj, box=box)
        return {f: (m > 0).numpy() for f, _, m in predictor.propagate_in_video(state)}


def _sqnr(reference, other):
    return float(10 * torch.log10(reference.double().pow(2).sum() / (other - reference).double().pow(2).sum()))


@pytest.fixture(scope="module")
def memory_setup(tmp_path_factory):
    """A synthetic clip, the float torch video predictor, calibration from its memory calls on the clip, and the
    model with W4A8 Q-SAM2 memory modules (qsam2_mini_w4a8's layers, 8-bit inputs) and its five IRs."""
    from PIL import Image

    from qsam2_ext.sam2.synthetic import write_video_split
    from qsam2_ext.sam2.video import build_video_predictor

    root = tmp_path_factory.mktemp("memory")
    reference = build_video_predictor(DEFAULT_MODEL_CONFIG, default_checkpoint()).eval()
    clip = write_video_split(str(root / "clip"), 1, 7, frames=5, size=reference.image_size)
    frames_dir = f"{clip}/JPEGImages/clip_00000"
    truth = np.array(Image.open(f"{clip}/Annotations/clip_00000/00000.png"))
    boxes = {}
    for obj in sorted(set(np.unique(truth)) - {0})[:2]:
        ys, xs = np.nonzero(truth == obj)
        boxes[int(obj)] = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    calibration = qn.record_memory_inputs(reference, lambda: _track(reference, frames_dir, boxes))
    quantized = qn.quantize_memory(reference, "qsam2_mini_w4a8", calibration, act_bits=8)
    folder = str(root / "ir")
    ov_model = qn.openvino_sam2(copy.deepcopy(quantized), folder, compress_to_fp16=False,
                                config={"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
    return dict(reference=reference, quantized=quantized, ov_model=ov_model, folder=folder, frames_dir=frames_dir,
                boxes=boxes, calibration=calibration)


@pytest.mark.parametrize("name, file, layers", [("memory_attention", "memory_attention.xml", 20),
                                                ("memory_encoder", "memory_encoder.xml", 6)])
def test_quantized_memory_irs_hold_integer_weights_and_fake_quantize(memory_setup, name, file, layers):
    """Every quantized layer's weights are i4 codes in the IR (no f32/f16 constant holds its float or grid values),
    each of its inputs a FakeQuantize; the CPU plugin runs the quantized layers as u8 × i8."""
    from qsam2_ext.integrations.nncf import _nncf as N
    from qsam2_ext.integrations.nncf.hooks import QSAM2FakeQuantize

    io = getattr(memory_setup["quantized"], name).io
    params = dict(io.named_parameters())
    weights = {n: (params[n].detach(), h(params[n]).detach()) for n, h in
               ((N.decode_hook_name(k)[1], h) for k, h in N.get_hook_storage(io).named_hooks())
               if isinstance(h, QSAM2FakeQuantize) and h.is_weight}
    assert len(weights) == layers
    ir = ov.Core().read_model(f"{memory_setup['folder']}/{file}")
    constants = {op.get_friendly_name(): op for op in ir.get_ops() if op.get_type_name() == "Constant"}
    for param in weights:
        assert constants[param].get_element_type() == ov.Type.i4, param
    floats = {op.get_data().astype(np.float32).tobytes() for op in constants.values()
              if op.get_element_type() in (ov.Type.f32, ov.Type.f16)}
    for param, (w, grid) in weights.items():
        assert w.numpy().tobytes() not in floats and grid.numpy().tobytes() not in floats, param
    assert sum(op.get_type_name() == "FakeQuantize" for op in ir.get_ops()) == layers
    compiled = getattr(memory_setup["ov_model"], name).compiled
    precisions = qn.runtime_precisions(compiled)
    assert precisions["FullyConnected"] == {"u8": sum(w.dim() == 2 for w, _ in weights.values())}
    assert precisions.get("Convolution", {}).get("u8", 0) == sum(w.dim() == 4 for w, _ in weights.values())


def test_quantized_memory_irs_match_the_fake_quantized_torch_modules(memory_setup):
    """On recorded memory calls (memory lengths 1..4 frames, 2 objects): the IRs' error against the torch
    fake-quantized modules is at least 10 dB below the quantization error itself (fake-quantized vs float).
    Not bit-exact: the export folds the 4-bit grid's offset into int8 weights (each weight within half an int8 step)
    and FakeQuantize may round a value on a tie the other way than LSC's f32 arithmetic."""
    from qsam2_ext.integrations.nncf.memory_io import MemoryAttentionIO, MemoryEncoderIO

    setup = memory_setup
    reference, quantized, ov_model = setup["reference"], setup["quantized"], setup["ov_model"]
    float_io = {"memory_attention": MemoryAttentionIO(reference.memory_attention, (reference.image_size // 16) ** 2),
                "memory_encoder": MemoryEncoderIO(reference.memory_encoder)}
    lengths = set()
    for name in ("memory_attention", "memory_encoder"):
        items = setup["calibration"][name]
        for item in items[:: max(1, len(items) // 4)]:
            with torch.no_grad():
                want = getattr(quantized, name).io(*item)
                exact = float_io[name](*item)
            want = want if isinstance(want, tuple) else (want,)
            exact = exact if isinstance(exact, tuple) else (exact,)
            wrapper = getattr(ov_model, name)
            if name == "memory_attention":
                lengths.add(item[2].shape[0])
                got = (wrapper([item[0]], torch.cat([item[2], item[4]]), [item[1]], torch.cat([item[3], item[5]]),
                               num_obj_ptr_tokens=item[4].shape[0]),)
            else:
                out = wrapper(*item, skip_mask_sigmoid=True)
                got = (out["vision_features"], out["vision_pos_enc"][0])
            quantization = _sqnr(exact[0], want[0])
            assert quantization < 40, "the quantization must be visible for the comparison to mean something"
            assert _sqnr(want[0], got[0]) > quantization + 10, name
            torch.testing.assert_close(got[1:], want[1:], rtol=1e-4, atol=1e-4)  # position encoding: not quantized
    assert len(lengths) >= 3


def test_weight_only_memory_irs_equal_the_torch_modules(memory_setup, tmp_path):
    """The shipped recipe's memory plan (weight-only): integer weights and the grid's exact offset term, so the IR
    equals the fake-quantized torch module (f32, no dynamic quantization) within float rounding; baked (integer
    codes in torch) it computes the same, and its IR (from the baked codes) equals it."""
    setup = memory_setup
    quantized = qn.quantize_memory(setup["reference"], "qsam2_mini_w4a8", setup["calibration"])
    item = setup["calibration"]["memory_attention"][-1]
    with torch.no_grad():
        fake = quantized.memory_attention.io(*item)
        qn.bake(quantized.memory_attention.io)
        torch.testing.assert_close(quantized.memory_attention.io(*item), fake, rtol=0, atol=0)
    report = qn.OpenVINOMemoryAttention.export(quantized.memory_attention, quantized.image_size, quantized.mem_dim,
                                               str(tmp_path / "ma.xml"), compress_to_fp16=False)
    assert report["quantized_inputs"] == 0 and report["fake_quantize_ops"] == 0 and report["constants"]["i4"] == 20
    compiled = ov.Core().compile_model(str(tmp_path / "ma.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                          "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
    wrapper = qn.OpenVINOMemoryAttention(compiled)
    with torch.no_grad():
        want = quantized.memory_attention.io(*item)
    got = wrapper([item[0]], torch.cat([item[2], item[4]]), [item[1]], torch.cat([item[3], item[5]]),
                  num_obj_ptr_tokens=item[4].shape[0])
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())


@pytest.mark.slow
def test_video_predictor_runs_on_quantized_memory_irs(memory_setup, tmp_path):
    """SAM2's video predictor with the quantized memory IRs (calibrated on another clip) tracks a point and a box
    prompt like the torch predictor with the same fake-quantized memory modules: IoU > 0.9 on every frame and
    object, > 0.98 on average (the masks are small, a few hundred pixels on later frames: a few pixels move the
    IoU; the IRs differ from torch by the fold and ties above)."""
    from PIL import Image
    from skimage import data

    image = data.astronaut()[::2, ::2]
    for i in range(5):
        Image.fromarray(np.roll(image, 6 * i, axis=1)).save(tmp_path / f"{i:05d}.jpg")
    masks = []
    for predictor in (memory_setup["quantized"], memory_setup["ov_model"]):
        with torch.inference_mode():
            state = predictor.init_state(video_path=str(tmp_path))
            predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([[100, 75]], np.float32),
                                            labels=np.array([1], np.int32))
            predictor.add_new_points_or_box(state, frame_idx=0, obj_id=2, box=np.array([25, 100, 150, 250],
                                                                                       np.float32))
            masks.append({f: (m > 0).numpy() for f, _, m in predictor.propagate_in_video(state)})
    assert sorted(masks[0]) == sorted(masks[1]) == list(range(5))
    ious = [_iou(masks[1][f][obj], masks[0][f][obj]) for f in range(1, 5) for obj in range(2)]
    assert min(ious) > 0.9 and np.mean(ious) > 0.98, ious
