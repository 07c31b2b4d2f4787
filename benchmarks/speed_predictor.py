"""The ``predictor`` part of ``speed.py``: ``SAM2ImagePredictor`` end to end, set_image + a point prompt per image."""

from __future__ import annotations

import numpy as np
import torch


def photo(size: int) -> np.ndarray:
    from qsam2_ext.sam2.images import load_photo

    import PIL.Image

    return np.asarray(PIL.Image.fromarray(load_photo("astronaut")).resize((size, size)))


def predictor_call(model, batch: int):
    """``SAM2ImagePredictor`` end to end on a batch of photos with a point prompt each, as a call without arguments
    (under inference mode and bf16 autocast, as SAM2's examples run it)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)
    images = [np.roll(photo(1024), 37 * i, axis=1) for i in range(batch)]
    points, labels = np.array([[500.0, 380.0]]), np.array([1])

    def call():
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
            if batch == 1:
                predictor.set_image(images[0])
                predictor.predict(point_coords=points, point_labels=labels, multimask_output=True)
            else:
                predictor.set_image_batch(images)
                predictor.predict_batch([points] * batch, [labels] * batch, multimask_output=True)

    return call


def predictor_turn(model, batch: int, fields: dict, held_bytes: int) -> tuple:
    """The predictor's call for ``time_in_turns``, with the row's fields and its peak memory less ``held_bytes``."""
    predict = predictor_call(model, batch)
    return predict, {**fields, "batch": batch, "peak_bytes": peak_bytes(predict) - held_bytes}, None


def peak_bytes(call, calls: int = 2) -> int:
    """Peak CUDA memory allocated over a few calls (the first ones also warm the call up)."""
    torch.cuda.reset_peak_memory_stats()
    for _ in range(calls):
        call()
    return torch.cuda.max_memory_allocated()
