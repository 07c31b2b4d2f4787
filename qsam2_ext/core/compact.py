"""Compact storage of activations: a float tensor kept as packed b-bit codes on the project's grid.

``compact(x, bits, dims)`` gives every slice of ``x`` along ``dims`` (the axes that share one grid) its own
min..max grid (``grid.token_grid``), rounds onto it (``grid.quantize``) and packs the codes (``packing``);
``CompactTensor.dequantize`` returns ``grid.dequantize`` of them. With ``dims=(1,)`` on a ``(B, C, H, W)`` feature
map every spatial position (token) has one grid over its channels; with ``dims=(2, 3)`` every channel has one grid
over its positions. Each value is off by at most half a step of its slice's grid (the grid spans the slice's
min..max exactly, so nothing clips). Used by SAM2's memory bank (``qsam2_ext.sam2.video``) to store memories.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .grid import dequantize, quantize, token_grid
from .packing import pack_codes, unpack_codes

COMPACT_BITS = (4, 8)


@dataclass(frozen=True)
class CompactTensor:
    """A tensor of ``shape`` and ``dtype`` stored as packed codes; the grid axes are moved last and flattened."""

    codes: torch.Tensor  # uint8 (*rest, packed_length(K)): K = the product of the grid axes' sizes
    center: torch.Tensor  # float32 (*rest, 1)
    step: torch.Tensor  # float32 (*rest, 1)
    bits: int
    shape: torch.Size
    dims: tuple[int, ...]  # the grid axes of ``shape`` (non-negative, sorted)
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held: codes and grids."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.center, self.step))

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device: Union[str, torch.device]) -> "CompactTensor":
        """The same codes on ``device`` (moving codes, not floats)."""
        move = [t.to(device, non_blocking=True) for t in (self.codes, self.center, self.step)]
        return CompactTensor(*move, self.bits, self.shape, self.dims, self.dtype)

    def dequantize(self, device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
        """The stored tensor as ``dtype`` (on ``device``, default: where the codes are)."""
        src = self if device is None else self.to(device)
        grid_len = 1
        for d in self.dims:
            grid_len *= self.shape[d]
        codes = unpack_codes(src.codes, self.bits, grid_len)
        flat = dequantize(codes, src.center, src.step).to(self.dtype)
        moved = [s for i, s in enumerate(self.shape) if i not in self.dims] + [self.shape[d] for d in self.dims]
        x = flat.reshape(moved)
        return x.movedim(tuple(range(x.ndim - len(self.dims), x.ndim)), self.dims)


def _check(bits: int, dims: Sequence[int], ndim: int) -> tuple[int, ...]:
    if isinstance(bits, bool) or bits not in COMPACT_BITS:
        raise ValueError(f"bits must be one of {COMPACT_BITS}, got {bits!r}")
    axes = sorted({d % ndim for d in dims}) if ndim else []
    if not axes or len(axes) != len(dims) or any(not -ndim <= d < ndim for d in dims):
        raise ValueError(f"dims must be distinct axes of a {ndim}-d tensor, got {tuple(dims)}")
    return tuple(axes)


def compact(x: torch.Tensor, bits: int, dims: Sequence[int]) -> CompactTensor:
    """Store floating-point ``x`` as ``bits``-bit codes with one grid per slice along ``dims``."""
    if not x.is_floating_point():
        raise TypeError(f"compact stores floating-point tensors, got {x.dtype}")
    axes = _check(bits, dims, x.ndim)
    flat = x.detach().movedim(axes, tuple(range(x.ndim - len(axes), x.ndim))).flatten(x.ndim - len(axes))
    flat = flat.float()
    center, step = token_grid(flat, bits)
    codes = pack_codes(quantize(flat, center, step, bits), bits)
    return CompactTensor(codes, center, step, bits, x.shape, axes, x.dtype)
