"""Triton kernels for Linear layers with packed 2/4/8-bit weights (``qsam2_ext.core.packing`` layout).

Weights arrive as they are stored: ``(N, ceil(K * bits / 8))`` bytes of unsigned codes plus one ``(center, step)``
grid per output row (or per group of ``group_k`` inputs); a code ``q`` means ``(q + 1/2) * step + center``. The
codes are unpacked in registers, so a 2-bit weight crosses memory as 2 bits.

* ``a16_linear``: float activations (bf16 / fp16) times weights dequantized in registers to the activation dtype,
  one tensor-core product per tile (W2A16 / W4A16 / W8A16).
* ``a8_linear``: activations quantized to int8 codes inside the GEMM (each row of the tile on its own min..max
  grid, found in a first pass over K, or one static per-tensor grid) times weight codes widened to int8, an int8
  tensor-core product into int32, and the grids applied in the epilogue (``qsam2_ext.core.int_linear``'s
  expansion). W2A8 runs here as well as W8A8: no peer toolkit fuses 2-bit weights into an int8 GEMM.
* ``dequantize_weight`` and ``fake_quantize_rows``: the unfused alternative (dequantize once, then cuBLAS);
  ``qsam2_ext.kernels.linear_op`` measures both and keeps the faster per shape.

Every grid expression is the reference's, evaluated in float32 with correctly rounded division, so activation codes
equal ``quantize_tokens(x.float())``'s wherever PyTorch rounds the grid's step the same way.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# qsam2_ext.core.grid.CONSTANT_ROW_SPAN (2**-64): a constant row keeps a positive step, and its values stay normal
_TINY = tl.constexpr(5.421010862427522e-20)


def _configs(int8: bool) -> list:
    shapes = [  # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages: tall tiles suit SAM2's many tokens x few channels
        (128, 128, 64, 8, 3), (32, 64, 128, 4, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4),
    ]
    if int8:  # int8 tensor-core steps are 32 deep: a longer K tile halves the loop
        shapes.append((128, 128, 128, 8, 3))
    if os.environ.get("QSAM2_KERNEL_TUNING") == "quick":  # tests: a large and a small tile, compiled in seconds
        shapes = shapes[:2]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


def _bench(fn, quantiles):  # autotuning is brief: a few ms per config and shape
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(row tile, column tile) of this program, in groups of 8 row tiles so neighbours share weights in L2."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    width = 8 * tiles_n
    first_m = (pid // width) * 8
    rows = tl.minimum(tiles_m - first_m, 8)
    return first_m + (pid % width) % rows, (pid % width) // rows


@triton.jit
def _weight_codes(w_ptr, rn, rk, n_ok, k_ok, stride_wn, BITS: tl.constexpr):
    """Signed codes of weights ``rn`` x inputs ``rk`` as a (K, N) int32 tile; 0 outside the matrix."""
    PER: tl.constexpr = 8 // BITS
    byte = tl.load(w_ptr + rn[None, :] * stride_wn + (rk // PER)[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0)
    u = (byte.to(tl.int32) >> ((rk % PER) * BITS)[:, None]) & ((1 << BITS) - 1)
    return tl.where(k_ok[:, None], u - (1 << (BITS - 1)), 0)


@triton.jit
def _weight_tile(w_ptr, c_ptr, s_ptr, rn, rk, n_ok, k_ok, stride_wn, group_k, groups, BITS: tl.constexpr):
    """Dequantized float32 (K, N) tile of the weight, each input on its group's grid."""
    codes = _weight_codes(w_ptr, rn, rk, n_ok, k_ok, stride_wn, BITS)
    at = rn[None, :] * groups + (rk // group_k)[:, None]
    ok = n_ok[None, :] & k_ok[:, None]
    step = tl.load(s_ptr + at, mask=ok, other=0.0).to(tl.float32)
    center = tl.load(c_ptr + at, mask=ok, other=0.0).to(tl.float32)
    return (codes.to(tl.float32) + 0.5) * step + center


@triton.jit
def _nan_min(a, b):
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _nan_max(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _extrema(x, ok):
    """Min and max of each row of ``x`` (2-D, float32) over the entries ``ok``; NaN where a row holds a NaN, as
    ``torch.amin``/``amax`` give it (``tl.min`` / ``tl.max`` on a GPU skip it)."""
    nan = tl.max(tl.where(ok & (x != x), 1, 0), axis=1) > 0
    lo = tl.min(tl.where(ok, x, float("inf")), axis=1)
    hi = tl.max(tl.where(ok, x, float("-inf")), axis=1)
    return tl.where(nan, float("nan"), lo), tl.where(nan, float("nan"), hi)


@triton.jit
def _grid(lo, hi, ACT_BITS: tl.constexpr):
    """Center and step of the grid spanning ``lo..hi`` (``qsam2_ext.core.token_grid``), float32."""
    hi = _nan_max(hi, lo + _TINY)
    return tl.math.div_rn(lo + hi, 2.0), tl.math.div_rn(hi - lo, (1 << ACT_BITS) - 1.0)


@triton.jit
def _row_grid(x_ptr, rm, m_ok, K, stride_xm, ACT_BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """Center and step of each row's own grid spanning its min..max (``qsam2_ext.core.token_grid``), float32."""
    lo = tl.full((BLOCK_M,), float("inf"), tl.float32)
    hi = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        ok = m_ok[:, None] & (rk < K)[None, :]
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=ok, other=0.0).to(tl.float32)
        part_lo, part_hi = _extrema(x, ok)
        lo, hi = _nan_min(lo, part_lo), _nan_max(hi, part_hi)
    center, step = _grid(lo, hi, ACT_BITS)
    return tl.where(m_ok, center, 0.0), tl.where(m_ok, step, 1.0)


@triton.jit
def _quantize(x, center, step, ACT_BITS: tl.constexpr):
    """Signed codes (float32 values) of the nearest level below, clipped: ``qsam2_ext.core.quantize``; a NaN
    quotient gives code 0, as the reference's int8 cast gives it on x86 and CUDA."""
    q = tl.floor(tl.math.div_rn(x - center, step))
    q = tl.where(q != q, 0.0, q)
    return tl.minimum(tl.maximum(q, -(1 << (ACT_BITS - 1)) * 1.0), (1 << (ACT_BITS - 1)) - 1.0)


@triton.autotune(configs=_configs(int8=False), key=["M", "N", "K", "BITS", "GROUPED"], do_bench=_bench)
@triton.jit
def a16_linear(x_ptr, w_ptr, c_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym, group_k, groups,
               BITS: tl.constexpr, GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``y = x @ dequant(w).T + b`` with the weight dequantized to x's dtype in registers; ``GROUPED``: a grid per
    group of ``group_k`` inputs, else one per output row (loaded once, not in every K tile)."""
    pid_m, pid_n = _tile(M, N, BLOCK_M, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    if not GROUPED:
        row_step = tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        row_center = tl.load(c_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if GROUPED:
            w = _weight_tile(w_ptr, c_ptr, s_ptr, rn, rk, n_ok, k_ok, stride_wn, group_k, groups, BITS)
        else:
            codes = _weight_codes(w_ptr, rn, rk, n_ok, k_ok, stride_wn, BITS)
            w = (codes.to(tl.float32) + 0.5) * row_step + row_center
        acc = tl.dot(x, w.to(x.dtype), acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.autotune(configs=_configs(int8=True), key=["M", "N", "K", "BITS", "DYNAMIC"], do_bench=_bench)
@triton.jit
def a8_linear(x_ptr, w_ptr, c_ptr, s_ptr, b_ptr, xc_ptr, xs_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
              BITS: tl.constexpr, ACT_BITS: tl.constexpr, DYNAMIC: tl.constexpr, HAS_BIAS: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``y = dequant(quant(x)) @ dequant(w).T + b`` from int8 codes: per-row dynamic input grids (``DYNAMIC``)
    or one static grid at ``xc_ptr``/``xs_ptr``; per-output-channel weight grids."""
    pid_m, pid_n = _tile(M, N, BLOCK_M, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    if DYNAMIC:
        x_center, x_step = _row_grid(x_ptr, rm, m_ok, K, stride_xm, ACT_BITS, BLOCK_K, BLOCK_M)
    else:
        x_center = tl.zeros((BLOCK_M,), tl.float32) + tl.load(xc_ptr).to(tl.float32)
        x_step = tl.zeros((BLOCK_M,), tl.float32) + tl.load(xs_ptr).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    a_sum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    b_sum = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        ok = m_ok[:, None] & k_ok[None, :]
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=ok, other=0.0).to(tl.float32)
        a = tl.where(ok, _quantize(x, x_center[:, None], x_step[:, None], ACT_BITS), 0.0).to(tl.int8)
        b = _weight_codes(w_ptr, rn, rk, n_ok, k_ok, stride_wn, BITS)
        acc += tl.dot(a, b.to(tl.int8), out_dtype=tl.int32)
        a_sum += tl.sum(a.to(tl.int32), axis=1)
        b_sum += tl.sum(b, axis=0)
    # y = s_x s_w (P + A/2 + B/2 + K/4) + s_x c_w (A + K/2) + c_x s_w (B + K/2) + K c_x c_w  (see int_linear)
    s_w = tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    c_w = tl.load(c_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    s_x, c_x = x_step[:, None], x_center[:, None]
    a_f, b_f, k_f = a_sum.to(tl.float32)[:, None], b_sum.to(tl.float32)[None, :], K * 1.0
    y = s_x * s_w * (acc.to(tl.float32) + a_f / 2 + b_f / 2 + k_f / 4)
    y += s_x * c_w * (a_f + k_f / 2) + c_x * s_w * (b_f + k_f / 2) + k_f * c_x * c_w
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def dequantize_weight(w_ptr, c_ptr, s_ptr, out_ptr, N, K, stride_wn, group_k, groups, BITS: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The dense ``(N, K)`` weight in ``out``'s dtype (the reference's ``dequantize``)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok, k_ok = rn < N, rk < K
    w = _weight_tile(w_ptr, c_ptr, s_ptr, rn, rk, n_ok, k_ok, stride_wn, group_k, groups, BITS)
    tl.store(out_ptr + rn[None, :] * K + rk[:, None], w.to(out_ptr.dtype.element_ty),
             mask=n_ok[None, :] & k_ok[:, None])


@triton.jit
def fake_quantize_rows(x_ptr, xc_ptr, xs_ptr, out_ptr, M, K, stride_xm, ACT_BITS: tl.constexpr,
                       DYNAMIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Quantize-dequantize rows of x on their own grids (``DYNAMIC``) or one static grid, into out (M, K)."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rm < M
    if DYNAMIC:
        center, step = _row_grid(x_ptr, rm, m_ok, K, stride_xm, ACT_BITS, BLOCK_K, BLOCK_M)
    else:
        center = tl.zeros((BLOCK_M,), tl.float32) + tl.load(xc_ptr).to(tl.float32)
        step = tl.zeros((BLOCK_M,), tl.float32) + tl.load(xs_ptr).to(tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        ok = m_ok[:, None] & (rk < K)[None, :]
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=ok, other=0.0).to(tl.float32)
        q = _quantize(x, center[:, None], step[:, None], ACT_BITS)
        tl.store(out_ptr + rm[:, None] * K + rk[None, :], ((q + 0.5) * step[:, None] + center[:, None]).to(
            out_ptr.dtype.element_ty), mask=ok)
