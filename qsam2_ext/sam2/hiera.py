"""Which input rows of SAM2's Hiera attention layers are real tokens, and which are window padding.

``MultiScaleBlock`` zero-pads its (B, H, W, C) grid up to a multiple of the window size before partitioning
it into windows. ``attn.qkv`` then sees all-zero rows at padded positions and ``attn.proj`` sees attention
outputs there (garbage rows that ``window_unpartition`` later crops). Calibration statistics must skip both.

The masks are computed from geometry, not from the data: before each block runs, a grid of ones is partitioned
exactly as the block partitions its input (with sam2's own ``window_partition``); at stage transitions
(q-pooling) the ``attn.proj`` rows live on the pooled grid with the pooled window size, exactly as the block
unpartitions them. The MLP and the transition ``proj`` act on the unpadded grid and need no mask.

While ``padding_masks()`` is active (it nests), a process-wide forward pre-hook records the masks of every Hiera
block that runs, whatever model it belongs to, so calibration observers attached by any route (``VRCCalibration``,
``quantize_(model, vrc_config(step="prepare"))``) find them with ``row_mask(layer)``. Outside calibration no hook
is installed and SAM2 runs untouched.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator, Optional

import torch
from torch import nn


def _valid_windows(batch: int, height: int, width: int, window: int, device) -> torch.Tensor:
    from sam2.modeling.backbones.utils import window_partition

    ones = torch.ones(batch, height, width, 1, device=device)
    windows, _ = window_partition(ones, window)
    return windows[..., 0] > 0.5


def block_row_masks(block: nn.Module, x: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """Masks over the input rows of ``block.attn.qkv`` and ``block.attn.proj`` for block input ``x`` (B, H, W, C)."""
    if block.window_size <= 0:
        return {}
    batch, height, width = x.shape[:3]
    qkv = _valid_windows(batch, height, width, block.window_size, x.device)
    proj = qkv
    if block.q_stride:
        sh, sw = block.q_stride
        proj = _valid_windows(batch, height // sh, width // sw, block.window_size // sh, x.device)
    return {block.attn.qkv: qkv, block.attn.proj: proj}


_lock = threading.Lock()
_users = 0
_handle = None
_masks: "weakref.WeakKeyDictionary[nn.Module, torch.Tensor]" = weakref.WeakKeyDictionary()


def _record(module: nn.Module, args) -> None:
    from sam2.modeling.backbones.hieradet import MultiScaleBlock

    if isinstance(module, MultiScaleBlock):
        _masks.update(block_row_masks(module, args[0]))


def acquire() -> None:
    """Start recording Hiera padding masks (reference counted; pair with ``release``)."""
    global _users, _handle
    with _lock:
        if _users == 0:
            _handle = torch.nn.modules.module.register_module_forward_pre_hook(_record)
        _users += 1


def release() -> None:
    global _users, _handle
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            _handle.remove()
            _handle = None
            _masks.clear()


@contextlib.contextmanager
def padding_masks() -> Iterator[None]:
    """Record Hiera padding masks during the forwards run inside this block."""
    acquire()
    try:
        yield
    finally:
        release()


def row_mask(layer: nn.Module) -> Optional[torch.Tensor]:
    """The mask recorded for ``layer``'s current input (consumed: a mask serves one forward), or None."""
    return _masks.pop(layer, None)
