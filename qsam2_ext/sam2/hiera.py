"""Which input rows of SAM2's Hiera attention layers are real tokens, and which are window padding.

``MultiScaleBlock`` zero-pads its (B, H, W, C) grid up to a multiple of the window size before partitioning
it into windows. ``attn.qkv`` then sees all-zero rows at padded positions and ``attn.proj`` sees attention
outputs there (garbage rows that ``window_unpartition`` later crops). Calibration statistics must skip both.

The masks are computed from geometry, not from the data: a forward pre-hook on each block partitions a grid of
ones exactly as the block partitions its input (with sam2's own ``window_partition``); at stage transitions
(q-pooling) the ``attn.proj`` rows live on the pooled grid with the pooled window size, exactly as the block
unpartitions them. The MLP and the transition ``proj`` act on the unpadded grid and need no mask.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _hiera_block_type():
    from sam2.modeling.backbones.hieradet import MultiScaleBlock

    return MultiScaleBlock


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
    masks = {block.attn.qkv: _valid_windows(batch, height, width, block.window_size, x.device)}
    if block.q_stride:
        sh, sw = block.q_stride
        pooled = _valid_windows(batch, height // sh, width // sw, block.window_size // sh, x.device)
        masks[block.attn.proj] = pooled
    else:
        masks[block.attn.proj] = masks[block.attn.qkv]
    return masks


class HieraPaddingMasks:
    """Context manager giving, for a Hiera attention Linear, the validity mask of its current input rows.

    Use it as the ``row_masks`` callable of ``qsam2_ext.core.VRCCalibration``; layers it does not know get None.
    """

    def __init__(self, model: nn.Module):
        block_type = _hiera_block_type()
        self.blocks = [m for m in model.modules() if isinstance(m, block_type)]
        self._masks: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def _pre_hook(self, block, args):
        for layer, mask in block_row_masks(block, args[0]).items():
            self._masks[id(layer)] = mask

    def __enter__(self) -> "HieraPaddingMasks":
        self._handles = [b.register_forward_pre_hook(self._pre_hook) for b in self.blocks]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._masks.clear()

    def __call__(self, module: nn.Module) -> Optional[torch.Tensor]:
        return self._masks.get(id(module))
