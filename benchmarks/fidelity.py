"""Encoder fidelity of every quantization method on the real SAM2.1 architectures (random initialisation: no
checkpoint can be downloaded here, so outputs are not segmentations): SQNR of the image encoder's FPN outputs
against the float model, per method and bit configuration.

    python benchmarks/fidelity.py                                  # t, s, b+, l at 256², CPU
    python benchmarks/fidelity.py --models sam2.1_hiera_t --size 512

Methods and targeted layers are the accuracy benchmark's (``accuracy_methods.py``). Calibration uses 8 real
photographs; QAT methods train by feature distillation from the float encoder (MSE of the FPN levels) for the same
steps on the same photos; SQNR is measured on 4 other photos. Writes ``<out>/fidelity.json`` and ``fidelity.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy import BITS  # noqa: E402
from accuracy_methods import METHODS, quantize  # noqa: E402

from qsam2_ext.io import write_json, write_text  # noqa: E402
from qsam2_ext.sam2.images import PHOTOS, photo_batch  # noqa: E402
from qsam2_ext.sam2.models import SAM2_CONFIGS, build_model  # noqa: E402

QUANTIZED = [m for m in METHODS if m not in ("fp", "fp_trained")]


def features(model, images: torch.Tensor) -> list[torch.Tensor]:
    return model.image_encoder(images)["backbone_fpn"]


def sqnr_db(reference: list[torch.Tensor], test: list[torch.Tensor]) -> float:
    signal = sum(r.double().square().sum() for r in reference)
    noise = sum((t.double() - r.double()).square().sum() for r, t in zip(reference, test))
    return float(10 * torch.log10(signal / noise)) if noise > 0 else math.inf


def distiller(teacher, batches: list[torch.Tensor], steps: int, lr: float, quantizer_lr: float):
    """QAT by feature distillation from the float encoder: the same steps and data for every method."""
    from qsam2_ext.train import parameter_groups

    with torch.no_grad():
        targets = [features(teacher, x) for x in batches]

    def train(model) -> None:
        weights, quantizer = parameter_groups(model.image_encoder)
        groups = [{"params": weights, "lr": lr}] + ([{"params": quantizer, "lr": quantizer_lr}] if quantizer else [])
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        model.train()
        for step in range(steps):
            i = step % len(batches)
            loss = sum(torch.nn.functional.mse_loss(s, t) for s, t in zip(features(model, batches[i]), targets[i]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()

    return train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(SAM2_CONFIGS), choices=list(SAM2_CONFIGS))
    p.add_argument("--methods", nargs="+", default=QUANTIZED, choices=QUANTIZED)
    p.add_argument("--bits", nargs="+", default=list(BITS), choices=list(BITS))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="QAT (distillation) steps")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--quantizer-lr", type=float, default=1e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="out/fidelity")
    p.add_argument("--resume", action="store_true", help="keep the rows already in <out>/rows.jsonl, run the rest")
    args = p.parse_args()
    torch.manual_seed(0)
    calibration = [photo_batch(PHOTOS[i:i + 2], args.size).to(args.device) for i in range(0, 8, 2)]
    held_out = photo_batch(PHOTOS[8:12], args.size).to(args.device)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    rows, started = [], time.time()
    os.makedirs(args.out, exist_ok=True)
    rows_path = os.path.join(args.out, "rows.jsonl")  # rows as they finish, should the run be cut short
    if args.resume and os.path.exists(rows_path):
        with open(rows_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    done = {(r["model"], r["bits"], r["method"]) for r in rows}
    partial = open(rows_path, "a" if args.resume else "w")
    for name in args.models:
        if all((name, b, m) in done for b in args.bits for m in args.methods):
            continue
        torch.manual_seed(0)
        float_model = build_model(name, image_size=args.size, device=args.device).eval()
        with torch.no_grad():
            reference = features(float_model, held_out)
        train = distiller(float_model, calibration, args.steps, args.lr, args.quantizer_lr)
        for bits in args.bits:
            for method in args.methods:
                if (name, bits, method) in done:
                    continue
                t0 = time.time()
                model = copy.deepcopy(float_model)
                quantize(model, method, *BITS[bits], calibration, train)
                with torch.no_grad():
                    db = sqnr_db(reference, features(model, held_out))
                rows.append({"model": name, "bits": bits, "method": method, "sqnr_db": db,
                             "seconds": time.time() - t0, "device": device})
                partial.write(json.dumps(rows[-1]) + "\n")
                partial.flush()
                print(f"{name} {bits} {method}: {db:.2f} dB ({time.time() - t0:.0f} s)", flush=True)
    meta = {"size": args.size, "steps": args.steps, "lr": args.lr, "quantizer_lr": args.quantizer_lr,
            "device": sorted({r.get("device", device) for r in rows}), "torch": torch.__version__, "seconds": time.time() - started,
            "command": " ".join(["python", "benchmarks/fidelity.py"] + sys.argv[1:])}
    write_json(os.path.join(args.out, "fidelity.json"), {"meta": meta, "rows": rows})
    lines = [f"Image-encoder SQNR (dB, FPN outputs vs float; higher is better) on random-init SAM2.1 at "
             f"{args.size}², 4 held-out photos; QAT: {args.steps} feature-distillation steps; {', '.join(meta['device'])}.", "",
             "| model | bits | " + " | ".join(args.methods) + " |", "|---|---|" + "---:|" * len(args.methods)]
    for name in args.models:
        for bits in args.bits:
            cells = {r["method"]: r["sqnr_db"] for r in rows if r["model"] == name and r["bits"] == bits}
            lines.append(f"| {name} | {bits} | " + " | ".join(f"{cells[m]:.1f}" for m in args.methods) + " |")
    text = "\n".join(lines) + "\n"
    write_text(os.path.join(args.out, "fidelity.md"), text)
    print(text)


if __name__ == "__main__":
    main()
