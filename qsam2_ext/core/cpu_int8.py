"""The int8 x int8 code product on CPUs, through whichever kernel is both fast and exact here.

``torch._int_mm`` runs oneDNN's int8 GEMM only on CPUs with AVX512-VNNI or AMX; elsewhere it is a plain loop (an
AVX2-only AMD EPYC, 2 cores: 4096x384 @ 384x1536 in 1.28-1.92 s against 47-65 ms in float32). oneDNN's u8 x s8
matmul (``torch.ops.onednn.qlinear_pointwise``) is fast on AVX2 too (the same product in 20 ms), but without VNNI it
adds pairs of u8 x s8 products in int16 with saturation: exact only while ``2 * 255 * max|w| <= 32767``, that is
for weight codes of up to 7 bits. So 2/3/4-bit weights (W2A8, W4A8) take it on AVX2 CPUs, 8-bit weights do not.
"""

from __future__ import annotations

import functools

import torch

# without VNNI a pair of u8 x s8 products is summed in int16: 2 * 255 * 2**(b-1) <= 32767 holds up to b = 7
U8S8_MAX_WEIGHT_BITS = 7


@functools.cache
def fast_int8_cpu() -> bool:
    """Whether this CPU has what torch's int8 GEMM (``torch._int_mm``) needs to be fast: AVX512-VNNI or AMX, which
    oneDNN uses; without them torch runs a plain loop, tens of times slower than float32."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_vnni_supported", "_is_amx_tile_supported")]
    if all(probe is None for probe in probes):  # a torch without these private probes: trust the caller's opt-in
        return True
    return any(probe() for probe in probes if probe is not None)


@functools.cache
def u8s8_cpu() -> bool:
    """Whether oneDNN's u8 x s8 matmul is available on this CPU: an x86 CPU with AVX2 or better and a torch built
    with oneDNN."""
    return (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.onednn, "qlinear_pointwise"))


def _takes_u8s8(weight_bits: int) -> bool:
    """Whether ``weight_bits``-bit weight codes go through oneDNN's u8 x s8 matmul: where ``torch._int_mm`` is slow,
    the kernel is there, and its int16 pair sums cannot saturate."""
    return not fast_int8_cpu() and weight_bits <= U8S8_MAX_WEIGHT_BITS and u8s8_cpu()


def fast_int8_product(weight_bits: int) -> bool:
    """Whether ``int8_product`` with ``weight_bits``-bit weight codes runs a fast kernel on this CPU."""
    return fast_int8_cpu() or _takes_u8s8(weight_bits)


def int8_product(codes: torch.Tensor, weight_codes: torch.Tensor, weight_bits: int = 8) -> torch.Tensor:
    """``codes @ weight_codes.T`` of int8 ``(M, K)`` and ``(N, K)`` codes, exactly, as float32 ``(M, N)`` (the
    int32 sum rounded to float32): oneDNN's u8 x s8 matmul for weights of up to 7 bits on CPUs without VNNI / AMX,
    else ``torch._int_mm``."""
    if codes.device.type == "cpu" and _takes_u8s8(weight_bits):
        return torch.ops.qsam2.u8s8_product(codes, weight_codes)
    return torch._int_mm(codes, weight_codes.t()).float()


@torch.library.custom_op("qsam2::u8s8_product", mutates_args=(), device_types="cpu")
def u8s8_product(codes: torch.Tensor, weight_codes: torch.Tensor) -> torch.Tensor:
    """oneDNN's u8 x s8 matmul on ``codes + 128`` with zero point 128: the int8 product (an opaque op, so that
    inductor keeps it whole: its own lowering wants the weight prepacked as a constant, ours unpack per call)."""
    m, k = codes.shape
    n = weight_codes.shape[0]
    packed = torch.ops.onednn.qlinear_prepack(weight_codes.contiguous(), [m, k])
    shifted = codes.contiguous().view(torch.uint8) ^ 0x80  # two's complement with the top bit flipped: code + 128
    ones, zeros = torch.ones(n), torch.zeros(n, dtype=torch.long)
    return torch.ops.onednn.qlinear_pointwise(shifted, 1.0, 128, packed, ones, zeros, None, 1.0, 0, torch.float32,
                                              "none", [], "")


@u8s8_product.register_fake
def _(codes, weight_codes):
    return codes.new_empty(codes.shape[0], weight_codes.shape[0], dtype=torch.float32)
