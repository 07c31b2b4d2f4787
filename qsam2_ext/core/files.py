"""Files: atomic writes (a reader, or a run killed mid-write, sees the old file or the new one, never half of one),
and reading official-layout checkpoints (``{"model": state_dict}``) with clear errors. Plain torch."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it is fsync'ed and renamed onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp creates 0600 (and some writers recreate the file): make it look like any other written file
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_checkpoint(path: str) -> Mapping[str, torch.Tensor]:
    """The state dict of an official-format SAM2 checkpoint (``{"model": state_dict}``), with clear errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file that is not a checkpoint
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), Mapping):
        found = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not in the official SAM2 checkpoint format (a dict with a 'model' state "
                         f"dict); found {found}")
    return ckpt["model"]


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise, listing them, if keys or shapes of ``state_dict`` do not match ``model`` (nothing is loaded)."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    shapes = sorted(f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                    if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape))
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} does not match the model config: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, {len(shapes)} shape mismatches {shapes[:3]}"
        )
