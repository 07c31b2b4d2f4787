"""The operands of the code products on CUDA, each made in one pass by a Triton kernel inside an opaque op.

* ``torch.ops.qsam2.quantize_tokens(x, bits, fp8)``: each row of ``x`` ``(M, K)`` (bf16, fp16 or fp32, read once:
  rows of up to ``ONE_PASS_MAX`` inputs stay in registers between their min/max and their rounding) on its own grid,
  as ``qsam2_ext.core.int_linear.quantize_tokens`` computes it: the codes (int8, or float8 e4m3 holding the same
  integers, ``fp8``), each row's center and step ``(M, 1)`` float32, and the row sums of the codes ``(M, 1)`` int32
  (``int_linear``'s ``A``), so that nothing else reads the input again.
* ``torch.ops.qsam2.unpack_codes(packed, bits, k, fp8)``: a packed 2/4/8-bit weight's ``(N, K)`` signed codes, int8
  or e4m3, and their row sums ``(N,)`` int32 (``int_linear``'s ``B``).

Both are ``torch.library.triton_op``s: ``torch.compile`` calls their kernels as they are and fuses nothing into them.
Traced as ATen ops instead, inductor fused each row's min/max and rounding into the producing LayerNorm / GELU as
multi-pass reductions, and at W2A4 the per-call weight unpack (with its code sums) into the same kernels: on an H200
about 54 ms of a 109 ms hiera_l encoder call at batch 8, against 14.5 ms for those producers in the bf16 model
(``benchmarks/results/speed_fp8_h200.md``). The grid is ``triton_packed``'s (``_extrema``, ``_grid``, ``_quantize``):
the reference's float32 operations with correctly rounded division, so codes, centers and steps equal
``quantize_tokens(x.float(), bits)``'s wherever PyTorch divides exactly (CPU; CUDA divides a tensor by a Python
number as a product with its reciprocal, so the reference's step can be one ulp off there, and a code one level off).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .triton_packed import _extrema, _grid, _quantize, _row_grid, _weight_codes

ONE_PASS_MAX = 16384  # longest row held in registers; longer rows are read twice (min/max, then codes)
_ROW_ELEMENTS = 2048  # inputs per program at least: short rows go several to a program
# 16 inputs a thread: the fastest of the tiles timed on an H100 for each hiera_l layer-input shape (8 of 8 shapes;
# 11-29 % faster than 8 a thread; benchmarks/act_quant_tiles.py, results/act_quant_tiles_h100.md)
_INPUTS_PER_THREAD = 16
_SPLIT_K = 4096  # the K tile of rows longer than ONE_PASS_MAX


@triton.jit
def quantize_token_rows(x_ptr, codes_ptr, center_ptr, step_ptr, sum_ptr, M, K, stride_xm, BITS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ONE_PASS: tl.constexpr):
    """Codes, grid and code sum of ``BLOCK_M`` rows; ``ONE_PASS``: a whole row fits one ``BLOCK_K`` tile."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rm < M
    rows = x_ptr + rm[:, None].to(tl.int64) * stride_xm
    out = codes_ptr + rm[:, None].to(tl.int64) * K
    if ONE_PASS:
        rk = tl.arange(0, BLOCK_K)
        ok = m_ok[:, None] & (rk < K)[None, :]
        x = tl.load(rows + rk[None, :], mask=ok, other=0.0).to(tl.float32)
        lo, hi = _extrema(x, ok)
        center, step = _grid(lo, hi, BITS)
        q = tl.where(ok, _quantize(x, center[:, None], step[:, None], BITS), 0.0)
        tl.store(out + rk[None, :], q.to(codes_ptr.dtype.element_ty), mask=ok)
        total = tl.sum(q.to(tl.int32), axis=1)
    else:
        center, step = _row_grid(x_ptr, rm, m_ok, K, stride_xm, BITS, BLOCK_K, BLOCK_M)
        total = tl.zeros((BLOCK_M,), tl.int32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            ok = m_ok[:, None] & (rk < K)[None, :]
            x = tl.load(rows + rk[None, :], mask=ok, other=0.0).to(tl.float32)
            q = tl.where(ok, _quantize(x, center[:, None], step[:, None], BITS), 0.0)
            tl.store(out + rk[None, :], q.to(codes_ptr.dtype.element_ty), mask=ok)
            total += tl.sum(q.to(tl.int32), axis=1)
    tl.store(center_ptr + rm, center, mask=m_ok)
    tl.store(step_ptr + rm, step, mask=m_ok)
    tl.store(sum_ptr + rm, total, mask=m_ok)


@triton.jit
def unpack_code_rows(w_ptr, codes_ptr, sum_ptr, N, K, stride_wn, BITS: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """Signed codes of ``BLOCK_N`` packed weight rows into ``codes`` ``(N, K)``, and each row's sum."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    total = tl.zeros((BLOCK_N,), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        codes = _weight_codes(w_ptr, rn, rk, n_ok, k_ok, stride_wn, BITS)  # (K, N), 0 outside the matrix
        tl.store(codes_ptr + rn[None, :].to(tl.int64) * K + rk[:, None],
                 codes.to(tl.float32).to(codes_ptr.dtype.element_ty), mask=n_ok[None, :] & k_ok[:, None])
        total += tl.sum(codes, axis=0)
    tl.store(sum_ptr + rn, total, mask=n_ok)


def token_tile(k: int) -> tuple[int, int, int, bool]:
    """``(BLOCK_K, BLOCK_M, num_warps, ONE_PASS)`` of ``quantize_token_rows`` for rows of ``k`` inputs."""
    block_k = triton.next_power_of_2(int(k))  # tiles are constants: a symbolic row length (a layer's width) specializes
    one_pass = block_k <= ONE_PASS_MAX
    block_k = block_k if one_pass else _SPLIT_K
    block_m = max(1, _ROW_ELEMENTS // block_k)
    return block_k, block_m, min(16, max(4, block_m * block_k // (32 * _INPUTS_PER_THREAD))), one_pass


def _launcher(kernel):
    # wrap_triton rejects the kernels of Triton's CPU interpreter (the tests' TRITON_INTERPRET=1), where nothing is
    # traced: they are called as they are (so fake tensors cannot trace these ops there)
    return kernel if os.environ.get("TRITON_INTERPRET") == "1" else wrap_triton(kernel)


def _code_dtype(bits: int, fp8: bool) -> torch.dtype:
    if fp8 and bits > 4:
        raise ValueError(f"{bits}-bit codes are not exact in float8 e4m3 (at most 4 bits)")
    return torch.float8_e4m3fn if fp8 else torch.int8


@triton_op("qsam2::quantize_tokens", mutates_args=())
def quantize_tokens(x: torch.Tensor, bits: int, fp8: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    """``(codes, center, step, code_sums)`` of the rows of ``x`` ``(M, K)`` on their own ``bits``-bit grids."""
    if x.ndim != 2 or x.dtype not in (torch.bfloat16, torch.float16, torch.float32) or bits not in (2, 3, 4, 8):
        raise ValueError(f"quantize_tokens takes (M, K) bf16/fp16/fp32 rows and 2/3/4/8 bits, got {tuple(x.shape)} "
                         f"{x.dtype}, {bits} bits")
    if x.stride(1) != 1:
        x = x.contiguous()
    m, k = x.shape
    codes = torch.empty((m, k), device=x.device, dtype=_code_dtype(bits, fp8))
    center = torch.empty((m, 1), device=x.device, dtype=torch.float32)
    step = torch.empty((m, 1), device=x.device, dtype=torch.float32)
    sums = torch.empty((m, 1), device=x.device, dtype=torch.int32)
    block_k, block_m, num_warps, one_pass = token_tile(k)
    if m and k:
        _launcher(quantize_token_rows)[(triton.cdiv(m, block_m),)](
            x, codes, center, step, sums, m, k, x.stride(0), BITS=bits, BLOCK_M=block_m, BLOCK_K=block_k,
            ONE_PASS=one_pass, num_warps=num_warps)
    return codes, center, step, sums


@triton_op("qsam2::unpack_codes", mutates_args=())
def unpack_codes(packed: torch.Tensor, bits: int, k: int, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, code_sums)`` of a packed ``(N, bytes)`` weight of ``k`` inputs (``qsam2_ext.core.packing``)."""
    if packed.ndim != 2 or packed.dtype != torch.uint8 or bits not in (2, 4, 8):
        raise ValueError(f"unpack_codes takes (N, bytes) uint8 rows of 2/4/8-bit codes, got {tuple(packed.shape)} "
                         f"{packed.dtype}, {bits} bits")
    if packed.shape[1] != -(-k // (8 // bits)):
        raise ValueError(f"{packed.shape[1]} packed bytes a row do not hold {k} {bits}-bit codes")
    if packed.stride(1) != 1:
        packed = packed.contiguous()
    n = packed.shape[0]
    codes = torch.empty((n, k), device=packed.device, dtype=_code_dtype(bits, fp8))
    sums = torch.empty((n,), device=packed.device, dtype=torch.int32)
    if n and k:
        _launcher(unpack_code_rows)[(triton.cdiv(n, 16),)](packed, codes, sums, n, k, packed.stride(0), BITS=bits,
                                                           BLOCK_N=16, BLOCK_K=256)
    return codes, sums
