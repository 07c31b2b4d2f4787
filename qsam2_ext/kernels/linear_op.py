"""``torch.ops.qsam2.packed_linear``: a Linear layer with packed low-bit weights on CUDA, two ways, measured.

For each layer shape the op times two implementations the first time it meets the shape, and keeps the faster:

* ``"fused"``: one Triton GEMM that unpacks the weight in registers (``a16_linear``, or ``a8_linear`` with the
  activation quantization and the int8 product fused);
* ``"unfused"``: a Triton kernel dequantizes the weight (and one fake-quantizes the activations) into a dense
  tensor, then cuBLAS multiplies. On SAM2's shapes (tens of thousands of tokens, a few hundred channels) unpacking a
  small weight once usually beats unpacking it in every tile (``benchmarks/results/speed.md``, layers table).

Both compute the reference (``QSAM2PackedTensor``'s dequantize-then-``F.linear``) with every grid in float32; they
differ from it by accumulation order only. Only eager calls reach the op: traced for ``torch.compile``, packed
layers keep the dequantize expression (or, inside ``integer_matmul()``, the integer product), which inductor
compiles without per-call Python. ``force_path`` pins one implementation (tests, benchmarks).
"""

from __future__ import annotations

from typing import Callable, ContextManager, Optional

import torch

from . import triton_packed as tk
from .path_choice import PathChoice

PATHS = ("fused", "unfused")
_CHOICE = PathChoice(PATHS)  # chosen: layer shape -> the faster path, measured on first use


def force_path(path: Optional[str]) -> ContextManager[None]:
    """Run every packed Linear through ``path`` ("fused" / "unfused"), or measure again (``None``)."""
    return _CHOICE.force(path)


def chosen_paths() -> dict[tuple, str]:
    """The path measured fastest per (device, M, K, N, bits, act_bits, static input grid, groups, dtype)."""
    return dict(_CHOICE.chosen)


def _grid_1d(n: int, block: int) -> int:
    return -(-n // block)


def _dense_weight(packed, center, step, bits: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    n, groups = center.shape
    out = torch.empty(n, k, device=packed.device, dtype=dtype)
    grid = (_grid_1d(n, 32), _grid_1d(k, 64))
    tk.dequantize_weight[grid](packed, center, step, out, n, k, packed.stride(0), k // groups, groups, BITS=bits,
                               BLOCK_N=32, BLOCK_K=64)
    return out


def _fake_quantized_rows(x, act_center, act_step, act_bits: int) -> torch.Tensor:
    m, k = x.shape
    out = torch.empty_like(x)
    dynamic = act_center is None  # then the kernel ignores the grid pointers: pass x for both
    tk.fake_quantize_rows[(_grid_1d(m, 16),)](
        x, x if dynamic else act_center, x if dynamic else act_step, out, m, k, x.stride(0), ACT_BITS=act_bits,
        DYNAMIC=dynamic, BLOCK_M=16, BLOCK_K=128)
    return out


def _fused(x, packed, center, step, bias, act_center, act_step, bits: int, act_bits: int) -> torch.Tensor:
    m, k = x.shape
    n, groups = center.shape
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    b = bias if bias is not None else y

    def grid(meta):
        return (_grid_1d(m, meta["BLOCK_M"]) * _grid_1d(n, meta["BLOCK_N"]),)

    if act_bits:
        dynamic = act_center is None
        tk.a8_linear[grid](x, packed, center, step, b, x if dynamic else act_center, x if dynamic else act_step, y,
                           m, n, k, x.stride(0), packed.stride(0), y.stride(0), BITS=bits, ACT_BITS=act_bits,
                           DYNAMIC=dynamic, HAS_BIAS=bias is not None)
    else:
        tk.a16_linear[grid](x, packed, center, step, b, y, m, n, k, x.stride(0), packed.stride(0), y.stride(0),
                            k // groups, groups, BITS=bits, GROUPED=groups > 1, HAS_BIAS=bias is not None)
    return y


def _unfused(x, packed, center, step, bias, act_center, act_step, bits: int, act_bits: int) -> torch.Tensor:
    if act_bits:
        x = _fake_quantized_rows(x, act_center, act_step, act_bits)
    return torch.nn.functional.linear(x, _dense_weight(packed, center, step, bits, x.shape[1], x.dtype), bias)


def _measure(candidates: dict[str, Callable[[], torch.Tensor]]) -> str:
    import triton.testing

    return min(candidates, key=lambda name: triton.testing.do_bench(candidates[name], warmup=5, rep=25))


@torch.library.custom_op("qsam2::packed_linear", mutates_args=(), device_types="cuda")
def packed_linear(x: torch.Tensor, packed: torch.Tensor, center: torch.Tensor, step: torch.Tensor,
                  bias: Optional[torch.Tensor], act_center: Optional[torch.Tensor], act_step: Optional[torch.Tensor],
                  bits: int, act_bits: int) -> torch.Tensor:
    """``x`` (..., K) times the packed ``(N, K)`` weight; ``act_bits=0``: float inputs, else inputs quantized per
    row (``act_center is None``) or on the static per-tensor grid."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    args = (rows, packed, center, step, bias, act_center, act_step, bits, act_bits)
    path = _CHOICE.forced
    if path is None:
        key = (x.device.index, *rows.shape, center.shape[0], bits, act_bits, act_center is not None,
               center.shape[1], x.dtype)
        path = _CHOICE.chosen.get(key)
        if path is None:
            path = _CHOICE.chosen[key] = _measure({"fused": lambda: _fused(*args), "unfused": lambda: _unfused(*args)})
    y = (_fused if path == "fused" else _unfused)(*args)
    return y.reshape(*x.shape[:-1], center.shape[0])


@packed_linear.register_fake
def _(x, packed, center, step, bias, act_center, act_step, bits, act_bits):
    return x.new_empty(*x.shape[:-1], center.shape[0])
