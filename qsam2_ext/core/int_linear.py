"""A linear layer computed on integer codes: one int8 x int8 -> int32 matrix product plus rank-one corrections.

With a per-token (or per-tensor) input grid ``x = (a + 1/2) s_x + c_x`` and a per-output-channel weight grid
``w = (b + 1/2) s_w + c_w`` over ``K`` inputs, the product expands exactly into

    y = s_x s_w (P + A/2 + B/2 + K/4) + s_x c_w (A + K/2) + c_x s_w (B + K/2) + K c_x c_w

with ``P = a b^T`` (integer, exact in int32), ``A = sum_k a`` per token and ``B = sum_k b`` per channel. It is the
reference dequantize-then-multiply result up to float rounding, at the cost of one integer GEMM (``int8_product``:
VNNI / AMX, or oneDNN's u8 x s8 matmul on AVX2 for weights of up to 7 bits; cuBLASLt's on CUDA). Weight codes of any
width up to 8 bits fit int8, so 2-bit weights run through the same product (W2A8).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .grid import quantize, token_grid
from .cpu_int8 import int8_product


def quantize_tokens(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Int8 codes of ``x`` (``(M, K)``) on each token's own grid, with the grids' centers and steps (``(M, 1)``):
    the grid of ``fake_quantize_per_token``."""
    center, step = token_grid(x, bits)
    return quantize(x, center, step, bits), center, step


def weight_columns(weight_codes: torch.Tensor, weight_center: torch.Tensor, weight_step: torch.Tensor,
                   bias: Optional[torch.Tensor] = None, code_sums: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The weight side of ``int_linear``'s rank terms, float32 ``(4, N)``: ``s_w``, ``c_w``, ``s_w (B/2 + K/4)`` and
    ``s_w (B + K/2) + K c_w``, then the bias as a fifth row if given. It depends on the weight alone (and the bias):
    a caller may compute it once and pass it to every ``int_linear`` call (``columns``). ``code_sums``, if given, is
    ``B`` (the codes' row sums) computed beforehand."""
    k = weight_codes.shape[-1]
    b = weight_codes.sum(dim=-1, dtype=torch.int32) if code_sums is None else code_sums
    b = b.float().reshape(1, -1)  # (1, N)
    s_w, c_w = weight_step.float().reshape(1, -1), weight_center.float().reshape(1, -1)
    cols = [s_w, c_w, s_w * (b / 2 + k / 4), s_w * (b + k / 2) + k * c_w]
    return torch.cat(cols if bias is None else cols + [bias.float().reshape(1, -1)], dim=0)


def int_linear(codes: torch.Tensor, center: torch.Tensor, step: torch.Tensor, weight_codes: torch.Tensor,
               weight_center: torch.Tensor, weight_step: torch.Tensor,
               bias: Optional[torch.Tensor] = None, weight_bits: int = 8,
               product: Optional[Callable[..., torch.Tensor]] = None,
               columns: Optional[torch.Tensor] = None, code_sums: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear`` of dequantized inputs and weights, computed from their codes.

    ``codes`` ``(M, K)`` int8 with ``center``/``step`` of shape ``(M, 1)`` or scalars; ``weight_codes`` ``(N, K)``
    int8 (at most ``weight_bits`` bits: it picks the kernel, ``int8_product``) with ``weight_center``/``weight_step``
    of shape ``(N, 1)``. Returns float32 ``(M, N)``. ``product(codes, weight_codes, s_x, s_w)``, if given,
    computes the scaled code product ``s_x (a b^T) s_w`` (``(M, 1)``, ``(1, N)`` float32 steps) in place of
    ``int8_product``'s (``qsam2_ext.kernels.fp8_linear``: on FP8 tensor cores). ``columns``, if given, is
    ``weight_columns(weight_codes, weight_center, weight_step, bias)`` computed beforehand (same result), and
    ``code_sums`` the input codes' row sums ``A`` (``(M, 1)``); with both, the codes may be float8 e4m3 holding the
    same integers (the FP8 ``product``'s operands, ``qsam2_ext.kernels.code_ops``).
    """
    k = codes.shape[-1]
    a = (codes.sum(dim=-1, keepdim=True, dtype=torch.int32) if code_sums is None else code_sums).float()  # (M, 1)
    s_x, c_x = (t.float().expand(codes.shape[0], 1) for t in (step.reshape(-1, 1), center.reshape(-1, 1)))
    cols = weight_columns(weight_codes, weight_center, weight_step, bias) if columns is None else columns
    s_w = cols[:1]
    # every term but the first is (row vector) x (column vector): one rank-4 product instead of M x N passes (an
    # all-broadcast epilogue, which inductor fuses into one pass, made the compiled W2A8 hiera_t encoder on a CPU
    # 1.26-1.38x slower, on two machines); a bias is one more rank, a column of ones against it
    terms = [s_x * a / 2, s_x * (a + k / 2), s_x, c_x] + ([torch.ones_like(s_x)] if cols.shape[0] > 4 else [])
    rows = torch.cat(terms, dim=1)                                                                 # (M, 4 or 5)
    if product is None:  # exact in int32: |sum| <= K * 2**14 < 2**31
        main = int8_product(codes, weight_codes, weight_bits).mul_(s_w).mul_(s_x)
    else:
        main = product(codes, weight_codes, s_x, s_w)
    if codes.is_cuda:
        # on GPUs the epilogue is memory-bound: four broadcast products that inductor fuses with the scaling into one
        # pass over the (M, N) output, instead of a rank-4 GEMM writing a second (M, N) float32 tensor
        out = main.float()
        for i in range(4):
            out = out + rows[:, i:i + 1] * cols[i:i + 1]
        return out if cols.shape[0] == 4 else out + cols[4]
    return main.addmm_(rows, cols)  # the rank terms (and bias) added inside the GEMM: no second (M, N) tensor


def cuda_int8_product_fits(m: int, k: int, n: int) -> bool:
    """Whether ``torch._int_mm`` on CUDA (cuBLASLt) takes an ``(m, k) x (k, n)`` product: more than 16 rows, inner
    and output sizes multiples of 8."""
    return m > 16 and k % 8 == 0 and n % 8 == 0
