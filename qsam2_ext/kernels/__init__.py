"""GPU kernels for packed Q-SAM2 layers (Triton). Imported lazily: CPU-only installs never load Triton.

``QSAM2PackedTensor`` sends a CUDA Linear here when ``supports`` says the kernels cover it; everything else keeps
the reference dequantize-then-multiply path.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Iterator

import torch

KERNEL_BITS = (2, 4, 8)  # 3-bit codes straddle bytes: reference path
_ENABLED = True


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@contextlib.contextmanager
def cuda_kernels(enabled: bool = True) -> Iterator[None]:
    """Use (default) or bypass the fast paths for packed layers on CUDA inside this context: the Triton kernels in
    eager mode, the int8 GEMM in compiled models (``integer_matmul``)."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, enabled
    try:
        yield
    finally:
        _ENABLED = previous


def enabled() -> bool:
    """Whether packed layers on CUDA may leave the reference path (``cuda_kernels``)."""
    return _ENABLED


def supports(x: torch.Tensor, weight) -> bool:
    """For a ``QSAM2PackedTensor`` Linear weight: inference on a CUDA half-precision input, 2/4/8-bit weights;
    quantized inputs only where the grids factor out of the int8 sum (``grids_factor``)."""
    return (
        _ENABLED and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and weight.bits in KERNEL_BITS
        and len(weight.weight_shape) == 2 and (weight.act_bits is None or weight.grids_factor())
        and not (torch.is_grad_enabled() and x.requires_grad) and triton_available()
    )


def packed_linear(*args, **kwargs) -> torch.Tensor:
    from .linear_op import packed_linear as op

    return op(*args, **kwargs)


def code_ops_fit(x: torch.Tensor) -> bool:
    """Whether ``quantize_tokens`` / ``unpack_codes`` (``code_ops``: Triton) take this CUDA layer input."""
    return x.is_cuda and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and triton_available()


def quantize_tokens(rows: torch.Tensor, bits: int, fp8: bool = False) -> tuple[torch.Tensor, ...]:
    """``(codes, center, step, code_sums)`` of ``(M, K)`` rows, each on its own grid, in one pass
    (``torch.ops.qsam2.quantize_tokens``); codes in float8 e4m3 with ``fp8``, else int8."""
    from . import code_ops  # noqa: F401  (registers the op)

    return torch.ops.qsam2.quantize_tokens(rows, bits, fp8)


def unpack_codes(packed: torch.Tensor, bits: int, k: int, fp8: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, code_sums)`` of a packed 2/4/8-bit ``(N, bytes)`` weight of ``k`` inputs
    (``torch.ops.qsam2.unpack_codes``); codes in float8 e4m3 with ``fp8``, else int8."""
    from . import code_ops  # noqa: F401  (registers the op)

    return torch.ops.qsam2.unpack_codes(packed, bits, k, fp8)
