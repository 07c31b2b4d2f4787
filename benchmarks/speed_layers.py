"""The ``layers`` part of ``speed.py``: each distinct encoder Linear shape on its own, eager (where the time goes)."""

from __future__ import annotations

import copy

import torch

from speed_rows import ROWS, is_linear, quantize_encoder
from speed_timing import cuda_ms


def bench_layers(encoder, batch: int, rows: list[str]) -> list[dict]:
    """Each distinct Linear shape of the float encoder, with the tokens it sees at this batch: bf16 cuBLAS
    against our packed kernels, both paths."""
    from qsam2_ext.kernels import cuda_kernels
    from qsam2_ext.kernels.linear_op import force_path

    shapes: dict[tuple, int] = {}

    def count(module, inputs, output):
        key = (inputs[0].numel() // module.in_features, module.in_features, module.out_features)
        shapes[key] = shapes.get(key, 0) + 1

    hooks = [m.register_forward_hook(count) for m in encoder.modules() if is_linear(m)]
    with torch.inference_mode():
        encoder(torch.randn(batch, 3, 1024, 1024, device="cuda"))
    for h in hooks:
        h.remove()
    quantizations = {}  # each quantization once (eager and compiled rows share one)
    for row in rows:
        if isinstance(ROWS[row][0], tuple):
            quantizations.setdefault(ROWS[row][0], row.removesuffix(" eager"))
    results = []
    for (m, k, n), uses in sorted(shapes.items()):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        layer = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            entry = {"M": m, "K": k, "N": n, "count": uses, "bf16_ms": cuda_ms(lambda: layer(x), 20)}
        for quantization, name in quantizations.items():
            holder = torch.nn.Sequential(copy.deepcopy(layer))
            quantize_encoder(holder, quantization)
            for path in ("fused", "unfused"):
                with force_path(path), torch.inference_mode():
                    entry[f"{name} {path}_ms"] = cuda_ms(lambda: holder(x), 20)
            with cuda_kernels(False), torch.inference_mode():  # the eager dequantize-then-F.linear reference
                entry[f"{name} reference_ms"] = cuda_ms(lambda: holder(x), 20)
        results.append(entry)
    return results
