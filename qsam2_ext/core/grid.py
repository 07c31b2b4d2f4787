"""The uniform b-bit grid that every quantizer in qsam2_ext rounds onto.

One grid family serves LSC, MinMax, PACT and LSQ. It has ``2**b`` levels ``step`` apart, placed symmetrically
around a ``center`` ("mid-rise")::

    level_k = center + (k + 1/2) * step,      k in [-2**(b-1), 2**(b-1) - 1]   (signed b-bit codes)

The outermost levels are the clip bounds ``lo = center - (2**b - 1)/2 * step`` and ``hi = center + (2**b - 1)/2 * step``:
clipping to ``[lo, hi]`` and rounding onto the grid are one operation, so the clip range *is* the grid (the
step is tied to it) and no level is wasted. At 2 bits a mid-tread grid would spend one of
its four levels on an exact zero and be lopsided ({-2,-1,0,1}); the mid-rise grid keeps all four symmetric.
In torchao's affine convention (``x = (q - zero_point) * scale``) the same grid is ``scale = step`` and the
float ``zero_point = -1/2 - center / step``.

Where the quantizers differ is only in how the clip range ``[lo, hi]`` is chosen:
LSC ``mu ± alpha*sigma``, MinMax ``[min, max]``, PACT ``[-alpha, alpha]``, LSQ ``[-2**(b-1) s, (2**(b-1)-1) s]``
(the LSQ case reproduces LSQ's mid-tread grid ``k*s`` exactly).
"""

from __future__ import annotations

from typing import Literal

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    return bits


def code_range(bits: int) -> tuple[int, int]:
    """Signed code range ``[-2**(b-1), 2**(b-1) - 1]``."""
    check_bits(bits)
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def center_step(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Center and step of the grid whose outermost levels are exactly ``lo`` and ``hi``."""
    return (lo + hi) / 2, (hi - lo) / (2**bits - 1)


def quantize(x: torch.Tensor, center: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integer codes (int8) of the nearest grid level; ties go up; values beyond the range clip."""
    qmin, qmax = code_range(bits)
    if torch.is_grad_enabled() and (x.requires_grad or step.requires_grad or center.requires_grad):
        return torch.floor((x - center) / step).clamp_(qmin, qmax).to(torch.int8)
    return (x - center).div_(step).floor_().clamp_(qmin, qmax).to(torch.int8)  # the same, in one buffer


def quantize_dequantize(x: torch.Tensor, center: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """``dequantize(quantize(x, center, step, bits), center, step)`` computed in one buffer: the same operations in
    the same order, hence the same bits, in a third of the eager passes (the int8 round trip is exact for codes in
    range; a NaN quotient, 0 / 0 on a constant token's zero step or a NaN input, becomes code 0 as x86's and CUDA's
    int8 casts make it, so a constant token still comes back as its center and ``carry_nonfinite`` still marks a NaN
    input). Under autograd it is the two-step expression."""
    if torch.is_grad_enabled() and (x.requires_grad or step.requires_grad or center.requires_grad):
        return dequantize(quantize(x, center, step, bits), center, step)
    qmin, qmax = code_range(bits)
    return (x - center).div_(step).floor_().clamp_(qmin, qmax).nan_to_num_(0.0).add_(0.5).mul_(step).add_(center)


def carry_nonfinite(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out`` with NaN wherever ``x`` is NaN or infinite, and unchanged elsewhere (``x * 0`` is zero for a finite
    ``x``, NaN otherwise). A fixed grid turns NaN into a code like any other value: a quantized model must not
    answer a NaN input with a number where its float model answers NaN."""
    return out + x * 0


def dequantize(codes: torch.Tensor, center: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Grid values of signed codes; the exact expression the fake quantizer uses, so both agree bit for bit."""
    return (codes.to(step.dtype) + 0.5) * step + center


def _straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Exactly ``value`` in the forward pass, the gradient of ``surrogate`` in the backward pass."""
    return value.detach() + (surrogate - surrogate.detach())


def fake_quantize(
    x: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    bits: int,
    ste: Literal["clip", "round"] = "clip",
) -> torch.Tensor:
    """Quantize-dequantize ``x`` onto the grid whose outermost levels are ``lo`` and ``hi``, straight through.

    ``ste="clip"`` (PACT style, used by LSC, PACT and MinMax): the whole rounding is straight-through, so
    d/dx is 1 inside ``[lo, hi]`` and 0 outside, and each bound receives the gradient of the values it clips.
    ``ste="round"`` (LSQ style): only the rounding is straight-through; the grid parameters also get the in-range
    rounding residual, which is exactly LSQ's d x_hat / d s when ``lo = -Q_N s`` and ``hi = Q_P s``.
    """
    qmin, qmax = code_range(bits)
    center, step = center_step(lo, hi, bits)
    if ste == "clip":
        # torch.where, not clamp/minimum: a value exactly at a bound keeps its whole gradient (they split ties)
        clipped = torch.where(x < lo, lo, torch.where(x > hi, hi, x))
        with torch.no_grad():
            codes = torch.floor((clipped - center) / step).clamp_(qmin, qmax)
            snapped = (codes + 0.5) * step + center
        return _straight_through(snapped, clipped)
    if ste == "round":
        # clip first (in grid units the outermost levels are qmin + 1/2 and qmax + 1/2), so values beyond the
        # range get LSQ's -Q_N / Q_P gradient and values inside it the rounding residual
        u = ((x - center) / step).clamp(qmin + 0.5, qmax + 0.5)
        codes = _straight_through(torch.floor(u).clamp_(qmin, qmax), u)
        return (codes + 0.5) * step + center
    raise ValueError(f"ste must be 'clip' or 'round', got {ste!r}")


# torch.compile (inductor) keeps a reduction of up to 1024 elements per row in registers; a longer row is read twice
# (for its min/max, then to quantize it) in a slower loop. Taking min and max over chunks first keeps them short.
REGISTER_ROW = 1024


def row_extrema(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of every slice along ``dim`` (kept as a size-1 dim). Rows longer than ``REGISTER_ROW`` reduce
    in two steps, over the longest chunks of at most ``REGISTER_ROW`` that divide them, then over the chunks: the
    same values (a min of mins), and on an H200 the compiled GELU + per-token quantization of hiera_l's
    2304-wide MLP activations took 0.27 instead of 0.51 ms (``benchmarks/results/act_quant.md``)."""
    dim = dim % x.ndim
    k = x.shape[dim]
    # a symbolic length (torch.compile(dynamic=True) on a long input dim) is specialized here: layers' channel
    # dims come from static weights and are concrete anyway
    chunk = next((c for c in range(REGISTER_ROW, 63, -1) if k % c == 0), k) if k > REGISTER_ROW else k
    if chunk == k:  # short, or no divisor of 64..1024 elements
        return x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    parts = x.unflatten(dim, (k // chunk, chunk))
    return parts.amin(dim=dim + 1).amin(dim=dim, keepdim=True), parts.amax(dim=dim + 1).amax(dim=dim, keepdim=True)


# A constant token (an all-zero padded window, say): its grid spans at least this much. A nonzero constant comes
# back exactly (the span rounds away: its step is 0 and every level its center); a zero token comes back as 0 or a
# value of about span * 2**-25. The span must keep that value, the step and the center normal numbers: with
# float32's smallest normal (``finfo.tiny``) they were subnormal, and CPU GEMMs fed subnormal inputs ran 5-10x
# slower (the W4A8 embedded model's encoder: 398 ms against 71 ms with subnormals flushed, one core).
CONSTANT_ROW_SPAN = 2.0**-64


def token_grid(x: torch.Tensor, bits: int, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Center and step of each token's own grid (slice along ``dim``) spanning its min..max."""
    lo, hi = row_extrema(x, dim)
    hi = torch.maximum(hi, lo + max(CONSTANT_ROW_SPAN, torch.finfo(x.dtype).tiny))
    return center_step(lo, hi, bits)


def fake_quantize_per_token(x: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """Dynamic quantize-dequantize: each token on its own grid (``token_grid``)."""
    center, step = token_grid(x, bits, dim)
    return quantize_dequantize(x, center, step, bits).to(x.dtype)
