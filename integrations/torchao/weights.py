"""The inference weight of a Q-SAM2 grid: torchao's own ``IntxUnpackedToInt8Tensor`` where it stores the grid
exactly, else (and for true 2/3/4-bit storage) the project's ``QSAM2PackedTensor``.

A Q-SAM2 grid ``(q + 1/2) * step + center`` is torchao's affine grid ``(q - zero_point) * scale`` with
``scale = step`` and the float ``zero_point = -1/2 - center / step``. The two expressions round differently unless
the grid is symmetric (``center == 0``: then ``zero_point = -1/2`` exactly and both compute ``(q + 1/2) * step``);
on LSC's mean-centred grids about a third of the levels differ by one ulp (measured on random layers). Exactness
is therefore checked, for every code of every group in the weight's dtype, through torchao's own ``dequantize``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torchao.quantization import IntxUnpackedToInt8Tensor

from .packed_tensor import QSAM2PackedTensor


def intx_qparams(center: torch.Tensor, step: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's ``(scale, zero_point)`` of the grid, in ``dtype`` (torchao dequantizes in the weight's dtype)."""
    zero_point = -0.5 - center.double() / step.double()
    return step.to(dtype), zero_point.to(dtype)


def exact_in_intx(center: torch.Tensor, step: torch.Tensor, bits: int, dtype: torch.dtype) -> bool:
    """Whether torchao's ``IntxUnpackedToInt8Tensor`` dequantizes every level of these ``(out, groups)`` grids to
    the value the project's grid gives (``QSAM2PackedTensor.dequantize`` in ``dtype``), bit for bit."""
    from qsam2_ext.core import code_range, dequantize

    qmin, qmax = code_range(bits)
    out, groups = center.shape
    levels = torch.arange(qmin, qmax + 1, dtype=torch.int8, device=center.device)
    codes = levels.repeat(out, groups)  # every code of every group: (out, groups * 2**bits)
    ours = dequantize(codes.reshape(out, groups, -1), center.unsqueeze(-1), step.unsqueeze(-1)).to(dtype)
    scale, zero_point = intx_qparams(center, step, dtype)
    theirs = IntxUnpackedToInt8Tensor(codes, scale, zero_point, getattr(torch, f"int{bits}"), (1, 2**bits), dtype,
                                      None).dequantize()
    return torch.equal(ours.reshape(out, -1), theirs)


def intx_weight(codes: torch.Tensor, center: torch.Tensor, step: torch.Tensor, bits: int,
                dtype: torch.dtype, scale_dtype: torch.dtype, where: str) -> IntxUnpackedToInt8Tensor:
    """torchao's ``IntxUnpackedToInt8Tensor`` of signed codes shaped like the weight (2-D, or a 4-D conv weight
    with per-channel grids), raising if it would not store the grid exactly."""
    out, groups = center.shape
    center, step = center.to(scale_dtype), step.to(scale_dtype)  # the grid as the packed format would store it
    if codes.ndim == 2:
        block_size = (1, codes.shape[1] // groups)
    elif groups == 1:
        block_size = (1, *codes.shape[1:])
    else:
        raise ValueError(f"{where}: torchao's unpacked_to_int8 format groups along one dim only; use per-channel "
                         "grids (granularity=PerAxis(0)) or packing_format='qsam2_packed' for this conv")
    if not exact_in_intx(center, step, bits, dtype):
        raise ValueError(
            f"{where}: torchao's IntxUnpackedToInt8Tensor cannot store this {bits}-bit grid exactly in {dtype} "
            "(its (q - zero_point) * scale rounds mean-centred grids differently): use "
            "packing_format='qsam2_packed', or a symmetric grid (method='pact')")
    scale, zero_point = intx_qparams(center, step, dtype)
    shape = [out] + [1] * (codes.ndim - 1)
    if codes.ndim == 2:
        shape[1] = groups
    return IntxUnpackedToInt8Tensor(codes.contiguous(), scale.reshape(shape), zero_point.reshape(shape),
                                    getattr(torch, f"int{bits}"), block_size, dtype, None)


def inference_weight(codes, center, step, bits: int, dtype: torch.dtype, scale_dtype: torch.dtype,
                     packing_format: str, where: str, act_bits: Optional[int] = None, act_grid=None) -> torch.Tensor:
    """The tensor a converted layer keeps: ``packing_format`` picks torchao's tensor or the packed one."""
    if packing_format == "unpacked_to_int8":
        if act_bits is not None:
            raise ValueError(f"{where}: quantized inputs need packing_format='qsam2_packed'")
        return intx_weight(codes, center, step, bits, dtype, scale_dtype, where)
    return QSAM2PackedTensor.from_codes(codes, center, step, bits, dtype, scale_dtype, act_bits, act_grid)
