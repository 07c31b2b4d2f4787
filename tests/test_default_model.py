"""The embedded default model: the shipped checkpoint is what its metadata says, loads through sam2's own
``build_sam2`` path, and segments held-out synthetic scenes and clips against their exact masks."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from qsam2_ext.sam2.metrics import mask_iou
from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, build_model, default_checkpoint, image_predictor
from qsam2_ext.sam2.synthetic import render_clip, render_scene

HELD_OUT_SEED = 1000


@pytest.fixture(scope="module")
def metadata():
    with open(os.path.splitext(default_checkpoint())[0] + ".json") as f:
        return json.load(f)


def test_checkpoint_is_the_recorded_one_in_the_official_format(metadata):
    path = default_checkpoint()
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == metadata["sha256"]
    assert os.path.getsize(path) <= 20e6
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == {"model"}
    assert sum(v.numel() for v in state["model"].values()) == metadata["parameters"]


def test_sam2_build_path_loads_it_strictly():
    from sam2.build_sam import build_sam2

    model = build_sam2(DEFAULT_MODEL_CONFIG, default_checkpoint(), device="cpu")  # raises on missing/unexpected keys
    reference = torch.load(default_checkpoint(), map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_box_prompts_segment_held_out_scenes():
    model = build_model(DEFAULT_MODEL_CONFIG, default_checkpoint())
    predictor = image_predictor(model)
    ious = []
    for index in range(6):
        image, masks = render_scene(HELD_OUT_SEED, 10_000 + index)  # never seen in training (seed 0)
        predictor.set_image(image)
        for mask in masks:
            ys, xs = np.nonzero(mask)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            pred, _, _ = predictor.predict(box=box, multimask_output=False)
            ious.append(mask_iou(pred[0] > 0, mask))
    assert len(ious) >= 6 and np.mean(ious) >= 0.7  # held-out box mIoU of the full split: 0.823


def test_video_predictor_tracks_a_held_out_clip(tmp_path):
    from PIL import Image

    frames, ids = render_clip(HELD_OUT_SEED, 10_000, frames=6)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{t:05d}.jpg", quality=95)
    model = build_model(DEFAULT_MODEL_CONFIG, default_checkpoint(), video=True)
    state = model.init_state(str(tmp_path))
    object_ids = [int(i) for i in np.unique(ids[0]) if i]
    for obj in object_ids:
        model.add_new_mask(state, frame_idx=0, obj_id=obj, mask=ids[0] == obj)
    ious = []
    with torch.no_grad():
        for t, tracked, logits in model.propagate_in_video(state):
            if t == 0:
                continue
            for k, obj in enumerate(tracked):
                if (ids[t] == obj).any():
                    ious.append(mask_iou(logits[k, 0].numpy() > 0, ids[t] == obj))
    assert ious and np.mean(ious) >= 0.3  # held-out J of the full split: 0.453
