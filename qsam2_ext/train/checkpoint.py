"""Training checkpoints, written atomically: a run killed at any moment leaves the previous checkpoint intact.

``checkpoint.pt`` holds ``{"model": state_dict, "optimizer", "scheduler", "step", "config", "bad_samples"}``.
The ``"model"`` key is SAM2's own checkpoint layout, so a float model's checkpoint loads with ``build_sam2``.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..core.files import load_torch
from ..errors import BadFileError
from ..io import atomic_write

CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 1


def checkpoint_path(out_dir: str) -> str:
    return os.path.join(out_dir, CHECKPOINT)


def save(path: str, *, model, optimizer, scheduler, step: int, config: dict, bad_samples: list) -> None:
    state = {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "config": config,
        "bad_samples": bad_samples,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load(path: str) -> Optional[dict]:
    """The checkpoint at ``path``, or None if there is none."""
    if not os.path.exists(path):
        return None
    state = load_torch(path)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise BadFileError(path, f"not a qsam2 training checkpoint (format {FORMAT_VERSION})")
    return state
