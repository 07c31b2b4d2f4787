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
