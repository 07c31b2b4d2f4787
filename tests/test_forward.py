"""The training clip forward against SAM2's own predictors, and what it trains."""

import copy
import warnings

import numpy as np
import pytest
import torch
from helpers import scene, tiny_model, write_video

from qsam2_ext.sam2 import build_model, check_image_size, image_predictor
from qsam2_ext.sam2.forward import ClipBatch, forward_clip

SIZE = 64


def _batch(images, coords, labels, masks=None, mask_prompt=False, frames=1, samples=None):
    n = len(coords)
    return ClipBatch(
        images=images,
        object_sample=torch.zeros(n, dtype=torch.long) if samples is None else torch.tensor(samples),
        point_coords=torch.as_tensor(coords, dtype=torch.float32),
        point_labels=torch.as_tensor(labels, dtype=torch.int32),
        masks=masks, mask_prompt=mask_prompt, click_seeds=list(range(n)), num_frames=frames, sources=["test"],
    )


@pytest.fixture(scope="module")
def model():
    m = tiny_model(SIZE).eval()
    with torch.no_grad():  # random heads often predict "no object", which blanks the masks: force presence
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return m


def test_image_forward_equals_sam2_image_predictor(model):
    from sam2.utils.transforms import SAM2Transforms

    image, _ = scene(np.random.default_rng(0), SIZE, SIZE, 2)
    predictor = image_predictor(model)
    predictor.set_image(image)
    points, labels = np.array([[[20.0, 30.0]], [[40.0, 10.0]]]), np.ones((2, 1), np.int32)
    masks, ious, low_res = predictor.predict(point_coords=points, point_labels=labels, multimask_output=True,
                                             return_logits=True)
    batch = _batch(SAM2Transforms(SIZE, 0.0)(image)[None], points, labels)
    with torch.no_grad():
        step = forward_clip(model, batch).steps[0][0]
    assert step.masks.shape == (2, 3, SIZE, SIZE)  # one click: multimask output, as the predictor decides
    np.testing.assert_allclose(step.ious.numpy(), ious, atol=1e-6)
    np.testing.assert_allclose(step.low_res_masks.numpy(), low_res, atol=1e-5)
    np.testing.assert_allclose(step.masks.numpy(), masks, atol=1e-5)


def test_video_forward_equals_sam2_video_predictor(model, tmp_path):
    """Frame 0 prompted with a point, frames 1-3 tracked through memory: the same logits as the predictor."""
    truth = write_video(tmp_path, videos=1, frames=4, height=SIZE, width=SIZE, objects=1)
    video = tiny_model(SIZE, video=True).eval()
    video.load_state_dict(model.state_dict())
    ys, xs = np.nonzero(truth["video0"][0] == 1)
    point = np.array([[xs[0], ys[0]]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = video.init_state(str(tmp_path / "JPEGImages" / "video0"))
        video.add_new_points_or_box(state, 0, 1, points=point, labels=np.array([1], np.int32))
        tracked = {t: logits[0, 0].numpy() for t, _, logits in video.propagate_in_video(state)}
    batch = _batch(state["images"][:4], point[None], [[1]], frames=4)
    with torch.no_grad():
        out = forward_clip(video, batch)  # the video build binarises prompted masks for memory, as at inference
    for t in range(4):
        step = out.steps[t][0]
        best = step.masks[0, step.ious[0].argmax()].numpy()
        np.testing.assert_allclose(best, tracked[t], atol=1e-4)


def _train_batch(frames, objects=2):
    rng = np.random.default_rng(0)
    images = torch.randn(frames, 3, SIZE, SIZE)
    masks = torch.zeros(frames, objects, SIZE, SIZE, dtype=torch.bool)
    masks[:, 0, 10:30, 10:40] = True
    masks[:, 1, 35:60, 20:50] = True
    coords = [[[20.0, 20.0]], [[30.0, 45.0]]][:objects]
    batch = _batch(images, coords, [[1]] * objects, masks=masks, frames=frames)
    return batch, rng


def _grads(model, out):
    loss = sum(s.masks.float().mean() + s.ious.sum() + s.object_scores.sum() for f in out.steps for s in f)
    model.zero_grad()
    loss.backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


def test_video_mode_trains_memory_modules_and_image_mode_does_not():
    model = tiny_model(SIZE).train()
    image_batch, _ = _train_batch(1)
    grads = _grads(model, forward_clip(model, image_batch))
    memory = [n for n in grads if n.startswith(("memory_attention.", "memory_encoder.", "maskmem_tpos_enc"))]
    assert memory and not any(grads[n] for n in memory)
    assert all(grads[n] for n in grads if n.startswith("image_encoder.trunk.blocks.0."))
    video_batch, _ = _train_batch(3)
    grads = _grads(model, forward_clip(model, video_batch))
    for prefix in ("memory_attention.", "memory_encoder.", "obj_ptr_proj.", "maskmem_tpos_enc", "image_encoder."):
        assert any(grads[n] for n in grads if n.startswith(prefix)), prefix


def test_objects_read_their_own_sample(model):
    """Two samples in one batch: each object's prediction equals that of its sample run alone."""
    images = torch.randn(2, 3, SIZE, SIZE)
    both = _batch(images, [[[10.0, 10.0]], [[50.0, 40.0]]], [[1], [1]], samples=[1, 0])
    with torch.no_grad():
        together = forward_clip(model, both).steps[0][0].masks
        alone = forward_clip(model, _batch(images[1:], [[[10.0, 10.0]]], [[1]])).steps[0][0].masks
    np.testing.assert_allclose(together[0].numpy(), alone[0].numpy(), atol=1e-5)


def test_correction_clicks_and_teacher_replay(model):
    batch, _ = _train_batch(1)
    with torch.no_grad():
        out = forward_clip(model, batch, corrections=2)
        again = forward_clip(model, batch, corrections=2)
        teacher = forward_clip(copy.deepcopy(model), batch, replay=out.clicks)
    assert [len(f) for f in out.steps] == [3] and len(out.clicks) == 2
    assert out.steps[0][0].masks.shape[1] == 3 and out.steps[0][1].masks.shape[1] == 1  # 2 clicks: single mask
    coords, labels = out.clicks[0]
    assert coords.shape == (2, 1, 2) and set(labels.flatten().tolist()) <= {0, 1}
    for a, b in zip(out.clicks, again.clicks):  # clicks are seeded per object
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for s, t in zip(out.steps[0], teacher.steps[0]):
        assert torch.equal(s.masks, t.masks)
    with pytest.raises(ValueError, match="ground-truth"):
        forward_clip(model, _batch(batch.images, [[[1.0, 1.0]]], [[1]]), corrections=1)


def test_mask_prompt_outputs_the_mask(model):
    batch, _ = _train_batch(2)
    batch.mask_prompt = True
    with torch.no_grad():
        out = forward_clip(model, batch)
    # SAM2.1 configs pass a mask prompt through as the prediction (logits +-10) and track from it
    assert torch.equal(out.steps[0][0].masks[:, 0] > 0, batch.masks[0])
    assert out.steps[1][0].masks.shape[1] in (1, 3)


def test_image_size_is_checked_and_applied():
    for bad in (0, 100, 64.0, True):
        with pytest.raises(ValueError, match="multiple of 32"):
            check_image_size(bad)
    model = build_model("sam2.1_hiera_t", image_size=128, overrides=["++model.image_encoder.trunk.stages=[1,1,2,1]",
                        "++model.image_encoder.trunk.global_att_blocks=[3]"])
    assert model.image_size == 128 and image_predictor(model)._bb_feat_sizes == [(32, 32), (16, 16), (8, 8)]
