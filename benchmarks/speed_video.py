"""The ``video`` part of ``speed.py``: ``SAM2VideoPredictor`` per frame, once its memory bank is full."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import torch

from speed_predictor import photo


def bench_video(model, frames: int = 16) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        import PIL.Image

        base = photo(1024)
        for i in range(frames):  # the photo panning: a tracked object that moves
            PIL.Image.fromarray(np.roll(base, 12 * i, axis=1)).save(os.path.join(folder, f"{i:05d}.jpg"))
        state = model.init_state(folder)
    times = []
    for run in range(2):  # the first pass warms up (and compiles)
        model.reset_state(state)
        model.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([[500.0, 380.0]], np.float32),
                                    labels=np.array([1], np.int32))
        torch.cuda.synchronize()
        last = time.perf_counter()
        for _ in model.propagate_in_video(state):
            torch.cuda.synchronize()
            now = time.perf_counter()
            if run:
                times.append((now - last) * 1e3)
            last = now
    return {"ms": statistics.median(times[8:]), "frames": frames}
