"""Model size of SAM2.1 t/s/b+/l after packed low-bit quantization, against bf16 (CPU; no checkpoint needed:
sizes do not depend on the weights' values).

    python benchmarks/size.py --out benchmarks/results/size
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
from torch import nn
from torchao.quantization import FqnToConfig, quantize_

import qsam2_ext
from qsam2_ext.sam2 import build_model

SIZES = ("t", "s", "b+", "l")


def bf16_bytes(module: nn.Module) -> int:
    return sum(t.numel() * 2 for t in module.state_dict().values())


def measure(size: str, bits: int, group_size):
    model = build_model(f"sam2.1_hiera_{size}").to(torch.bfloat16)
    float_bytes = bf16_bytes(model)
    linear = lambda m: isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))
    targets = {n for n, m in model.named_modules() if linear(m)}
    cfg = qsam2_ext.qsam2_config(bits=bits, group_size=group_size)
    quantize_(model, FqnToConfig({n: cfg for n in targets}), filter_fn=None)
    report = qsam2_ext.storage_report(model)
    trunk = qsam2_ext.storage_report(model.image_encoder.trunk)
    return {
        "model": f"sam2.1_hiera_{size}", "bits": bits, "group_size": group_size,
        "layers_quantized": len(targets),
        "bf16_model_bytes": float_bytes, "quantized_model_bytes": report["model_bytes"],
        "model_ratio_vs_bf16": report["model_bytes"] / float_bytes,
        "quantized_weights_ratio_vs_bf16": report["packed_ratio_vs_bf16"],
        "encoder_trunk_linears_ratio_vs_bf16": trunk["packed_ratio_vs_bf16"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    ap.add_argument("--out", default="benchmarks/results/size")
    args = ap.parse_args()
    rows = [measure(s, bits, g) for s in args.sizes for bits, g in ((2, None), (3, None), (4, None), (4, 64), (8, None))]
    lines = ["# Packed model size vs bf16 (all Linear and 1x1 Conv2d layers quantized; grids in bf16)", "",
             "| model | bits | group | layers | bf16 MB | quantized MB | model ratio | quantized-weights ratio | trunk Linear ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bits']} | {r['group_size'] or 'channel'} | {r['layers_quantized']} | "
                     f"{r['bf16_model_bytes'] / 1e6:.1f} | {r['quantized_model_bytes'] / 1e6:.1f} | "
                     f"{r['model_ratio_vs_bf16']:.3f} | {r['quantized_weights_ratio_vs_bf16']:.3f} | "
                     f"{r['encoder_trunk_linears_ratio_vs_bf16']:.3f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for suffix, text in ((".json", json.dumps(rows, indent=1)), (".md", table)):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(args.out) or ".")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, args.out + suffix)


if __name__ == "__main__":
    main()
