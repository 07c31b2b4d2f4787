"""A4 layers (W2A4, W4A4) on FP8 tensor cores, exactly: the integer code product through ``torch._scaled_mm``.

Signed codes of at most 4 bits are integers in ``[-8, 7]``, which float8 e4m3 holds exactly, and ``K`` products of
at most 64 in magnitude sum to at most ``64 K < 2**24`` for every ``K <= 262144``: the fp32 accumulator of cuBLASLt's
FP8 GEMM (``use_fast_accum=False``) holds the integer product ``P = a b^T`` exactly. ``int_linear`` expands the
layer around ``P`` (its grids and rank-one terms), so an A4 layer computes what the integer reference computes.

Per layer shape, the first trace measures the candidates and keeps the fastest (``chosen_paths``):

* ``"fp8"``: ``P`` in float32 (unit tensorwise scales), the grids applied by inductor in a pointwise epilogue that
  it fuses with what reads the output: bit-exact ``P``;
* ``"fp8 rowwise"``: the grids' steps as row/column scales of the GEMM, ``s_x s_w P`` written in bf16 (half the
  output bytes; the product is rounded to bf16 before the rank-one terms are added);
* ``"bf16"``: the reference expression (dequantized operands, one bf16 cuBLAS GEMM).

Only the GEMMs are timed (the FP8 paths take the same codes, from ``code_ops``' one-pass kernels).
"""

from __future__ import annotations

from typing import ContextManager, Optional

import torch

from .path_choice import PathChoice

FP8_MAX_BITS = 4  # codes in [-8, 7]: exact in e4m3 (and their products' sums exact in fp32 for K < 2**18)
PATHS = ("fp8", "fp8 rowwise", "bf16")
_CHOICE = PathChoice(PATHS)


def fits(m: int, k: int, n: int, bits: int, act_bits: Optional[int]) -> bool:
    """Whether ``torch._scaled_mm`` can compute this layer's code product exactly: weights and inputs of at most 4
    bits, inner and output sizes multiples of 16 (cuBLASLt's FP8 layouts). Whether the GPU has FP8 tensor cores is
    ``choose``'s question (without them it answers "bf16")."""
    return (act_bits is not None and bits <= FP8_MAX_BITS and act_bits <= FP8_MAX_BITS and k % 16 == 0
            and n % 16 == 0 and m > 0 and k < 2**18)


def force_path(path: Optional[str]) -> ContextManager[None]:
    """Trace every A4 layer through ``path`` (one of ``PATHS``), or measure again (``None``)."""
    return _CHOICE.force(path)


def forced_path() -> Optional[str]:
    """The path ``force_path`` pinned, if any."""
    return _CHOICE.forced


def chosen_paths() -> dict[tuple, str]:
    """The path measured fastest per (device, M, K, N)."""
    return dict(_CHOICE.chosen)


def to_fp8(codes: torch.Tensor) -> torch.Tensor:
    """Integer codes of at most 4 bits as float8 e4m3, exactly (codes already in e4m3 as they are)."""
    if codes.dtype == torch.float8_e4m3fn:
        return codes
    return codes.to(torch.float16).to(torch.float8_e4m3fn)


def fp8_product(codes: torch.Tensor, weight_codes: torch.Tensor) -> torch.Tensor:
    """``codes @ weight_codes.T`` of ``(M, K)`` and ``(N, K)`` codes of at most 4 bits, exactly, as float32."""
    one = torch.ones((), device=codes.device, dtype=torch.float32)
    return torch._scaled_mm(to_fp8(codes), to_fp8(weight_codes).t(), one, one, out_dtype=torch.float32,
                            use_fast_accum=False)


def scaled_product(path: str):
    """``int_linear``'s ``product`` for ``path``: ``s_x (a b^T) s_w`` from the exact float32 product (``"fp8"``:
    the same bits as the int8 product's), or with the steps as the GEMM's row and column scales, in bf16."""
    if path == "fp8":
        return lambda codes, weight_codes, s_x, s_w: fp8_product(codes, weight_codes) * s_w * s_x
    if path == "fp8 rowwise":
        def rowwise(codes, weight_codes, s_x, s_w):
            return torch._scaled_mm(to_fp8(codes), to_fp8(weight_codes).t(), s_x.contiguous(),
                                    s_w.expand(1, weight_codes.shape[0]).contiguous(), out_dtype=torch.bfloat16,
                                    use_fast_accum=False)
        return rowwise
    raise ValueError(f"no FP8 product for path {path!r}")


def _candidates(m: int, k: int, n: int, device: torch.device) -> dict:
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
    a = torch.randint(-8, 8, (m, k), device=device, dtype=torch.int8)
    b = torch.randint(-8, 8, (n, k), device=device, dtype=torch.int8)
    a8, b8 = to_fp8(a), to_fp8(b)
    one = torch.ones((), device=device)
    s_x, s_w = torch.rand(m, 1, device=device), torch.rand(1, n, device=device)
    return {
        "fp8": lambda: torch._scaled_mm(a8, b8.t(), one, one, out_dtype=torch.float32),
        "fp8 rowwise": lambda: torch._scaled_mm(a8, b8.t(), s_x, s_w, out_dtype=torch.bfloat16),
        "bf16": lambda: torch.nn.functional.linear(x, w),
    }


def _measure(m: int, k: int, n: int, device: torch.device) -> str:
    """The fastest path for this shape on real tensors, outside any trace (fake, proxy or functional modes)."""
    import triton.testing
    from torch.utils._python_dispatch import _disable_current_modes

    times = {}
    with _disable_current_modes(), torch.inference_mode():
        for name, fn in _candidates(m, k, n, device).items():
            try:
                times[name] = triton.testing.do_bench(fn, warmup=5, rep=20)
            except RuntimeError:  # e.g. rowwise scaling not built for this GPU: not a candidate
                continue
    return min(times, key=times.get) if times else "bf16"


def choose(m: int, k: int, n: int, device: torch.device) -> str:
    """The path for an A4 layer of this shape: forced, else measured once per (device, shape) and cached."""
    if _CHOICE.forced is not None:
        return _CHOICE.forced
    return PATHS[_measured(m, k, n, device.index or 0)]  # a tensor's device always has its index


@torch._dynamo.assume_constant_result  # traced by dynamo, the measurement runs for real and its answer is a constant
def _measured(m: int, k: int, n: int, index: int) -> int:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability(index) < (8, 9):
        return PATHS.index("bf16")  # no FP8 tensor cores here
    key = (index, m, k, n)
    if key not in _CHOICE.chosen:
        _CHOICE.chosen[key] = _measure(m, k, n, torch.device("cuda", index))
    return PATHS.index(_CHOICE.chosen[key])
