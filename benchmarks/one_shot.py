"""One-shot (post-training, no data) weight quantization through ``quantize_``: SQNR of the outputs against float,
for ``qsam2_config`` (each row's least-error range among LSC's initial one kept within the data and the data range
narrowed, ``FakeQuantizer.grid(within_range=True)``), the grid before that change (LSC's ``mu ± alpha sigma`` even
where it lies beyond the row's data) and torchao's own ``IntxWeightOnlyConfig`` (the peer), in one run on the same
weights.

    python benchmarks/one_shot.py                       # a random 512->256 Linear and hiera_t's image encoder
    python benchmarks/one_shot.py --bits 3 4 8 --size 256

Targets: a random ``nn.Linear`` (uniform initialisation, the case issue 23 reported: 17.7 dB against torchao's
20.1) and the Linear layers of a random-init SAM2.1 hiera_t image encoder (SQNR of its FPN outputs on real photos).
Writes ``<out>/one_shot.json`` and ``one_shot.md``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from unittest import mock

import torch
from torch import nn
from torchao.quantization import IntxWeightOnlyConfig, PerAxis, PerGroup, quantize_

from qsam2_ext import QSAM2Config
from qsam2_ext.core import FakeQuantizer
from qsam2_ext.io import write_json, write_text

ROWS = ("qsam2 (MSE-best range)", "qsam2 before (LSC initial grid)", "torchao intx")


def _sqnr(reference, test) -> float:
    reference, test = torch.cat([r.flatten() for r in reference]), torch.cat([t.flatten() for t in test])
    noise = (test.double() - reference.double()).square().sum()
    return float(10 * torch.log10(reference.double().square().sum() / noise)) if noise > 0 else math.inf


def _quantized(model: nn.Module, row: str, bits: int, granularity) -> nn.Module:
    model = copy.deepcopy(model)
    dtype = getattr(torch, f"int{bits}")
    if row == "torchao intx":
        quantize_(model, IntxWeightOnlyConfig(dtype, granularity=granularity))
    elif row == "qsam2 before (LSC initial grid)":
        encode = FakeQuantizer.encode
        with mock.patch.object(FakeQuantizer, "encode", lambda self, x, within_range=False: encode(self, x)):
            quantize_(model, QSAM2Config(weight_dtype=dtype, granularity=granularity))
    else:
        quantize_(model, QSAM2Config(weight_dtype=dtype, granularity=granularity))
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4, 8])
    p.add_argument("--size", type=int, default=256, help="image side for hiera_t")
    p.add_argument("--no-sam2", action="store_true", help="the random Linear only")
    p.add_argument("--out", default="out/one_shot")
    args = p.parse_args()
    torch.manual_seed(0)
    targets = {}
    layer, x = nn.Linear(512, 256), torch.randn(64, 512)
    targets["random Linear 512->256"] = (layer, lambda m: [m(x)])
    if not args.no_sam2:
        from qsam2_ext.sam2.images import PHOTOS, photo_batch
        from qsam2_ext.sam2.models import build_model

        encoder = build_model("sam2.1_hiera_t", image_size=args.size).eval().image_encoder
        photos = photo_batch(PHOTOS[8:10], args.size)
        targets["hiera_t image encoder"] = (encoder, lambda m: m(photos)["backbone_fpn"])
    rows, started = [], time.time()
    with torch.no_grad():
        for target, (model, run) in targets.items():
            reference = run(model)
            for bits in args.bits:
                for granularity in (PerAxis(0), PerGroup(32)):
                    cells = {row: _sqnr(reference, run(_quantized(model, row, bits, granularity))) for row in ROWS}
                    rows.append({"target": target, "bits": bits, "granularity": repr(granularity), **cells})
                    print(rows[-1], flush=True)
    meta = {"torch": torch.__version__, "seconds": time.time() - started, "device": f"CPU ({os.cpu_count()} cores)",
            "command": " ".join(["python", "benchmarks/one_shot.py"] + sys.argv[1:])}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "one_shot.json"), {"meta": meta, "rows": rows})
    lines = ["One-shot weight-only quantization: output SQNR (dB) against float; higher is better.", "",
             "| target | bits | granularity | " + " | ".join(ROWS) + " | qsam2 - torchao |",
             "|---|---|---|" + "---:|" * (len(ROWS) + 1)]
    for r in rows:
        cells = " | ".join(f"{r[row]:.2f}" for row in ROWS)
        lines.append(f"| {r['target']} | {r['bits']} | {r['granularity']} | {cells} | "
                     f"{r[ROWS[0]] - r['torchao intx']:+.2f} |")
    text = "\n".join(lines) + "\n"
    write_text(os.path.join(args.out, "one_shot.md"), text)
    print(text)


if __name__ == "__main__":
    main()
