"""The ``encoder`` part of ``speed.py``: ``image_encoder(images)`` timed per call (and, as the ``encoder-graph``
part, replayed as a CUDA graph through ``speed_timing``)."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from speed_profile import profile_call
from speed_timing import compile_s, cuda_ms


def encoder_call(model, batch: int):
    """``model.image_encoder`` on a batch of photos, as a call without arguments."""
    from qsam2_ext.sam2.images import PHOTOS, photo_batch

    images = photo_batch([PHOTOS[i % len(PHOTOS)] for i in range(batch)], model.image_size)
    images = images.to("cuda")  # float32, as SAM2's predictors hand them over
    return lambda: model.image_encoder(images)


def bench_encoder(call, repeats: int, compiled: bool, profile: bool) -> dict:
    compile_seconds = compile_s(call) if compiled else None
    frames_before = dict(counters["frames"])
    torch.cuda.reset_peak_memory_stats()
    ms = cuda_ms(call, repeats)
    result = {"ms": ms, "compile_s": compile_seconds, "peak_bytes": torch.cuda.max_memory_allocated()}
    if compiled:  # frames dynamo had to (re)compile while being timed: nonzero means the timing is not steady
        frames = {k: v - frames_before.get(k, 0) for k, v in counters["frames"].items()}
        result["frames_compiled_while_timed"] = frames.get("total", 0)
    return {**result, "profile": profile_call(call)} if profile else result
