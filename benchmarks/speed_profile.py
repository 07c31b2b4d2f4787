"""Where a call's time goes on the GPU: CPU time against kernel time, kernels by kind (GEMM, activation
quantization, attention, ...), the top operators (``speed.py --profile``)."""

from __future__ import annotations

import torch


def profile_call(call, calls: int = 3, top: int = 10) -> dict:
    """Where one call's time goes: CPU time (Python, dispatch, launches) against GPU kernel time, per call, and the
    operators that take most of each."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    events = prof.key_averages()

    def device_us(e):
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))

    def table(key):
        rows = sorted(events, key=key, reverse=True)[:top]
        return [{"op": e.key[:90], "cpu_ms": e.self_cpu_time_total / 1e3 / calls, "gpu_ms": device_us(e) / 1e3 / calls,
                 "count": e.count // calls} for e in rows]

    kernels = [e for e in events if e.device_type == DeviceType.CUDA]  # operators' device time repeats their kernels'
    families: dict = {}
    for e in kernels:
        family = families.setdefault(kernel_family(e.key), {"gpu_ms": 0.0, "count": 0})
        family["gpu_ms"] += device_us(e) / 1e3 / calls
        family["count"] += e.count // calls
    return {"cpu_ms_per_call": sum(e.self_cpu_time_total for e in events) / 1e3 / calls,
            "gpu_ms_per_call": sum(device_us(e) for e in kernels) / 1e3 / calls,
            "by_gpu": table(device_us), "by_cpu": table(lambda e: e.self_cpu_time_total),
            "kernel_families": dict(sorted(families.items(), key=lambda kv: -kv[1]["gpu_ms"]))}


KERNEL_FAMILIES = (  # (family, name fragments), first match wins; names as cuBLAS, cuDNN and inductor give them
    # qsam2_ext.kernels.code_ops' Triton kernels, which inductor calls as they are (nothing fused into them)
    ("activation quantization (qsam2 one-pass kernel)", ("quantize_token_rows",)),
    ("weight unpacking (qsam2 kernel)", ("unpack_code_rows",)),
    ("attention (cuDNN/flash SDPA)", ("sdpa", "flash", "fmha", "attention")),
    ("convolution (cuDNN)", ("conv", "cudnn")),
    ("GEMM (cuBLAS/CUTLASS)", ("nvjet", "gemm", "cutlass", "xmma")),
    ("inductor: weight unpacking", ("bitwise",)),  # shifts and masks of packed codes, with whatever inductor fused
    # activation grids (row min/max, absmax) and rounding onto them, with whatever inductor fused (LayerNorm, GELU)
    ("inductor: activation quantization", ("amax", "amin", "floor", "clamp")),
    ("inductor: other", ("triton_",)),
)


def kernel_family(name: str) -> str:
    """Which kind of work a CUDA kernel does, by its name (for attributing a row's GPU time against the baseline's)."""
    low = name.lower()
    for family, fragments in KERNEL_FAMILIES:
        if any(f in low for f in fragments):
            return family
    return "other (copies, memsets, aten kernels)"
