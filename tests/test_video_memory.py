"""The quantized, bounded SAM2 memory bank: compact storage (against a NumPy reference), lazy frames (against sam2's
own loader), and QSAM2VideoPredictor against sam2's SAM2VideoPredictor on the embedded model (qsam2_mini)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from qsam2_ext.core.compact import CompactTensor, compact

# --- compact storage -------------------------------------------------------------------------------------------


def _np_reference(x: np.ndarray, bits: int, axes: tuple) -> np.ndarray:
    """Every slice along ``axes`` rounded to the nearest of 2**b levels spanning its min..max (mid-rise)."""
    lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    step = np.maximum(hi - lo, 1e-30) / (2**bits - 1)
    k = np.clip(np.floor((x - (lo + hi) / 2) / step), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return (k + 0.5) * step + (lo + hi) / 2, step


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dims", [(1,), (2, 3), (3,)])
def test_compact_matches_numpy_grid(bits, dims):
    x = torch.randn(2, 6, 5, 7) * torch.linspace(0.1, 4, 7)  # slices of different ranges; odd sizes pack padded
    stored = compact(x, bits, dims)
    back = stored.dequantize()
    ref, step = _np_reference(x.double().numpy(), bits, dims)
    assert back.shape == x.shape and back.dtype == x.dtype
    np.testing.assert_allclose(back.double().numpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert (np.abs(back.double().numpy() - x.double().numpy()) <= step / 2 * (1 + 1e-5)).all()  # nothing clips
    grid_len = int(np.prod([x.shape[d] for d in dims]))
    assert stored.codes.dtype == torch.uint8 and stored.codes.shape[-1] == -(-grid_len * bits // 8)


def test_compact_bytes_dtype_and_edge_cases():
    x = torch.randn(1, 64, 16, 16, dtype=torch.bfloat16)
    s8, s4 = compact(x, 8, (1,)), compact(x, 4, (1,))
    assert s8.nbytes == 256 * 64 + 2 * 256 * 4 and s4.nbytes == 256 * 32 + 2 * 256 * 4
    assert s8.dequantize().dtype == torch.bfloat16
    constant = torch.full((3, 4), 2.5)
    assert torch.equal(compact(constant, 8, (1,)).dequantize(), constant)  # a constant slice is exact
    assert isinstance(s8.to("cpu"), CompactTensor)
    with pytest.raises(ValueError, match="bits"):
        compact(x, 3, (1,))
    with pytest.raises(ValueError, match="dims"):
        compact(x, 8, (1, 1))
    with pytest.raises(ValueError, match="dims"):
        compact(x, 8, (4,))
    with pytest.raises(TypeError):
        compact(torch.ones(3, dtype=torch.int32), 8, (0,))


# --- lazy frames -----------------------------------------------------------------------------------------------


def _write_frames(folder, sizes, names=None, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for t, (w, h) in enumerate(sizes):
        name = names[t] if names else f"{t:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(folder, name))
    return folder


def test_folder_frames_equal_sam2_loader(tmp_path):
    from sam2.utils.misc import load_video_frames

    from qsam2_ext.sam2.frames import open_frames

    folder = _write_frames(str(tmp_path / "v"), [(40, 30)] * 3)
    images, height, width = load_video_frames(folder, 64, offload_video_to_cpu=True, compute_device="cpu")
    frames = open_frames(folder, 64)
    assert len(frames) == 3 and (frames.video_height, frames.video_width) == (height, width) == (30, 40)
    for t in (2, 0, 1):
        assert torch.equal(frames[t], images[t])  # bit for bit, in any order


def test_folder_frames_natural_order_and_errors(tmp_path):
    from qsam2_ext.sam2.frames import FrameError, open_frames

    folder = _write_frames(str(tmp_path / "v"), [(16, 16)] * 3, names=["f10.png", "f2.png", "f1.png"])
    assert [open_frames(folder, 32).name(i) for i in range(3)] == ["f1.png", "f2.png", "f10.png"]
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FrameError, match="no frames"):
        open_frames(str(tmp_path / "empty"), 32)
    with pytest.raises(FrameError, match="no such"):
        open_frames(str(tmp_path / "missing"), 32)
    mixed = _write_frames(str(tmp_path / "mixed"), [(16, 16), (16, 16), (20, 16)])
    frames = open_frames(mixed, 32)
    frames[1]
    with pytest.raises(FrameError, match="frame 2 is 20x16, frame 0 is 16x16"):
        frames[2]
    with pytest.raises(FrameError, match="past the end"):
        frames[3]
    (tmp_path / "mixed" / "00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FrameError, match="unreadable frame 1"):
        frames[1]


def test_video_file_frames(tmp_path):
    av = pytest.importorskip("av")
    from qsam2_ext.sam2.frames import FrameError, open_frames

    path = str(tmp_path / "clip.mp4")
    rng = np.random.default_rng(0)
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = open_frames(path, 64)
    assert len(frames) == 5 and (frames.video_width, frames.video_height) == (48, 32)
    forward = [frames[t] for t in range(5)]
    assert torch.equal(frames[1], forward[1]) and torch.equal(frames[4], forward[4])  # back, then forward again
    assert forward[0].shape == (3, 64, 64) and not torch.equal(forward[0], forward[1])
    with pytest.raises(FrameError, match="past the end"):
        frames[5]
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(FrameError, match="unreadable video"):
        open_frames(str(tmp_path / "bad.mp4"), 64)


# --- the predictor ---------------------------------------------------------------------------------------------

FRAMES = 20  # longer than the object-pointer window (15 frames) and the memory window (6)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from qsam2_ext.sam2.synthetic import write_video_split

    root = str(tmp_path_factory.mktemp("clip"))
    write_video_split(root, 1, seed=1000, frames=FRAMES)
    ids = np.array(Image.open(os.path.join(root, "Annotations", "clip_00000", "00000.png")))
    return os.path.join(root, "JPEGImages", "clip_00000"), ids == 1


def _mini(memory_bits="sam2", granularity="token"):
    from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, build_model, default_checkpoint
    from qsam2_ext.sam2.video import build_video_predictor

    if memory_bits == "sam2":
        return build_model(DEFAULT_MODEL_CONFIG, default_checkpoint(), video=True)
    return build_video_predictor(DEFAULT_MODEL_CONFIG, default_checkpoint(), memory_bits=memory_bits,
                                 memory_granularity=granularity)


def _track(predictor, folder, mask, **init):
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.filterwarnings("ignore", message=".*cannot import name '_C'")
        state = predictor.init_state(folder, **init)
        predictor.add_new_mask(state, 0, 1, mask)
        logits = {f: out.clone() for f, _, out in predictor.propagate_in_video(state)}
    return logits, state


@pytest.fixture(scope="module")
def runs(clip):
    folder, mask = clip
    out = {"sam2": _track(_mini(), folder, mask)}
    for bits in (None, 8, 4):
        predictor = _mini(bits)
        out[(bits, True)] = _track(predictor, folder, mask, streaming=True)
        if bits == 8:
            out[(bits, False)] = _track(predictor, folder, mask)
    return out


def _iou(a, b):
    a, b = a > 0, b > 0
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def test_streaming_float_bank_equals_sam2(runs):
    sam2, ours = runs["sam2"][0], runs[(None, True)][0]
    assert sorted(ours) == list(range(FRAMES))
    for f in sam2:
        assert torch.equal(sam2[f], ours[f]), f


def test_streaming_equals_interactive_with_int8(runs):
    streaming, interactive = runs[(8, True)][0], runs[(8, False)][0]
    for f in interactive:
        assert torch.equal(streaming[f], interactive[f]), f


def test_streaming_state_is_bounded(runs, clip):
    from qsam2_ext.sam2.video import CompactFrameOutput

    predictor = _mini(8)
    memory, pointers = predictor.windows()
    assert (memory, pointers) == (6, 15)
    last = FRAMES - 1
    for key in [(None, True), (8, True)]:
        state = runs[key][1]
        outputs = state["output_dict_per_obj"][0]
        assert list(outputs["cond_frame_outputs"]) == [0]
        kept = outputs["non_cond_frame_outputs"]
        assert sorted(kept) == list(range(last + 1 - pointers, last + 1))
        with_memory = sorted(t for t, out in kept.items() if out["maskmem_features"] is not None)
        assert with_memory == list(range(last + 1 - memory, last + 1))
        assert sorted(state["frames_tracked_per_obj"][0]) == list(range(last + 1 - pointers, last + 1))
    interactive = runs[(8, False)][1]["output_dict_per_obj"][0]["non_cond_frame_outputs"]
    assert len(interactive) == FRAMES - 1 and all(isinstance(o, CompactFrameOutput) for o in interactive.values())


def test_quantized_bank_is_close_to_float_and_smaller(runs):
    from qsam2_ext.core.compact import CompactTensor

    fp = runs[(None, True)][0]
    for bits, floor in ((8, 0.97), (4, 0.9)):
        ours = runs[(bits, True)][0]
        assert np.mean([_iou(fp[f], ours[f]) for f in fp]) >= floor
    out8 = runs[(8, False)][1]["output_dict_per_obj"][0]["non_cond_frame_outputs"][5]
    out_fp = runs["sam2"][1]["output_dict_per_obj"][0]["non_cond_frame_outputs"][5]
    features, masks = out8.stored("maskmem_features"), out8.stored("pred_masks")
    assert isinstance(features, CompactTensor) and features.bits == 8 and isinstance(masks, CompactTensor)
    fp_bytes = sum(out_fp[k].numel() * out_fp[k].element_size() for k in ("maskmem_features", "pred_masks"))
    assert features.nbytes + masks.nbytes < 0.6 * fp_bytes
    deq = out8["maskmem_features"]
    ref = out_fp["maskmem_features"]
    assert deq.dtype == ref.dtype == torch.bfloat16 and deq.shape == ref.shape


def test_interactive_mode_reprompt_and_reverse(clip):
    """Correction clicks on a tracked frame (its stored int8 logits are read back) and reverse tracking work, and
    agree with sam2's float bank."""
    folder, mask = clip
    ys, xs = np.nonzero(mask)
    point = np.array([[xs.mean(), ys.mean()]], np.float32)

    def session(predictor):
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.filterwarnings("ignore", message=".*cannot import name '_C'")
            state = predictor.init_state(folder)
            predictor.add_new_mask(state, 5, 1, mask)
            forward = {f: m.clone() for f, _, m in predictor.propagate_in_video(state, max_frame_num_to_track=6)}
            _, _, corrected = predictor.add_new_points_or_box(state, 8, 1, points=point, labels=np.ones(1, np.int32),
                                                              clear_old_points=False)
            backward = {f: m.clone() for f, _, m in predictor.propagate_in_video(state, start_frame_idx=8,
                                                                                 reverse=True)}
        return forward, corrected.clone(), backward

    ref, ours = session(_mini()), session(_mini(8))
    assert sorted(ours[2]) == list(range(9))
    assert _iou(ref[1], ours[1]) > 0.95
    assert np.mean([_iou(ref[2][f], ours[2][f]) for f in ref[2]]) > 0.95


def test_streaming_refuses_what_it_cannot_do(clip):
    folder, mask = clip
    predictor = _mini(8)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.filterwarnings("ignore", message=".*cannot import name '_C'")
        state = predictor.init_state(folder, streaming=True)
        with pytest.raises(ValueError, match="past the end"):
            predictor.add_new_mask(state, FRAMES, 1, mask)
        predictor.add_new_mask(state, 0, 1, mask)
        with pytest.raises(ValueError, match="forward only"):
            next(predictor.propagate_in_video(state, reverse=True))
        for _ in predictor.propagate_in_video(state, max_frame_num_to_track=3):
            pass
        with pytest.raises(ValueError, match="already tracked"):
            predictor.add_new_points_or_box(state, 2, 1, points=[[5, 5]], labels=[1])
        with pytest.raises(ValueError, match="evicted"):
            next(predictor.propagate_in_video(state, start_frame_idx=1))
        rest = [f for f, _, _ in predictor.propagate_in_video(state)]  # goes on where it stopped
    assert rest == list(range(4, FRAMES))


def test_wrap_shares_the_model(clip, runs):
    from qsam2_ext.sam2.video import QSAM2VideoPredictor

    folder, mask = clip
    sam2 = _mini()
    wrapped = QSAM2VideoPredictor.wrap(sam2, memory_bits=8)
    assert type(sam2).__name__ == "SAM2VideoPredictor"
    assert wrapped.image_encoder is sam2.image_encoder
    assert wrapped.memory_attention.layers[0].linear1.weight is sam2.memory_attention.layers[0].linear1.weight
    logits, _ = _track(wrapped, folder, mask, streaming=True)
    for f, ref in runs[(8, True)][0].items():
        assert torch.equal(logits[f], ref)
    with pytest.raises(TypeError, match="SAM2VideoPredictor"):
        QSAM2VideoPredictor.wrap(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="memory bits"):
        QSAM2VideoPredictor.wrap(sam2, memory_bits=2)


def test_recipe_memory_section(tmp_path):
    from qsam2_ext.recipes import RecipeError, load_recipe

    assert load_recipe("qsam2_mini_w4a8").spec.memory is None  # no section: sam2's float bank
    good = tmp_path / "good.yaml"
    good.write_text("extends: qsam2_mini_w4a8\nmemory: {bits: 4, granularity: channel}\n")
    memory = load_recipe(str(good)).spec.memory
    assert (memory.bits, memory.granularity) == (4, "channel")
    default = tmp_path / "default.yaml"
    default.write_text("extends: qsam2_mini_w4a8\nmemory: {}\n")
    assert load_recipe(str(default)).spec.memory.bits == 8
    for text, message in (("memory: {bits: 3}", "memory.bits"), ("memory: {bitz: 8}", "unknown field")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"extends: qsam2_mini_w4a8\n{text}\n")
        with pytest.raises(RecipeError, match=message):
            load_recipe(str(bad))
