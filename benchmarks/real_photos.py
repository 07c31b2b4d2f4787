"""Point and box mIoU on real photographs (``qsam2_ext.sam2.real_photos``: evaluation only, never trained on),
for float models next to the filled-prompt-box baseline (the prompt box itself, filled, as the mask).

    python benchmarks/real_photos.py                                   # the embedded qsam2_mini (v1)
    python benchmarks/real_photos.py --checkpoint v2=runs/v2/qsam2_mini.pt

Prompts are the evaluation's (``qsam2_ext.evaluate``): ``point`` is the mask's innermost pixel with multimask
output, the mask with the highest predicted IoU kept; ``box`` is the tight box, single mask. Images go to SAM2's
predictor at their own size (it resizes to the model's input). mIoU is the mean over instances (the 24 coins
dominate it), so the per-photo means are reported too. Writes ``<out>/real_photos.json`` and ``real_photos.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from qsam2_ext.io import write_json, write_text
from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, build_model, default_checkpoint, image_predictor
from qsam2_ext.sam2.real_photos import real_photos, score, summarise

BASELINE = "filled box"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="a qsam2_mini checkpoint to evaluate (repeatable; default: v1=the embedded one)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint) or {"v1": default_checkpoint()}
    started = time.time()
    photos = real_photos()
    results = {BASELINE: summarise(score(None, photos))}
    records = {}
    for name, path in checkpoints.items():
        model = build_model(DEFAULT_MODEL_CONFIG, path).eval()
        records[name] = score(image_predictor(model), photos)
        results[name] = summarise(records[name])
    meta = {"photos": {ph.name: {"source": ph.source, "instances": len(ph.masks), "size": list(ph.image.shape[:2])}
                       for ph in photos},
            "checkpoints": {k: os.path.relpath(v) if os.path.isabs(v) and "site-packages" not in v else
                            os.path.basename(v) for k, v in checkpoints.items()},
            "device": f"CPU ({os.cpu_count()} cores)", "torch": torch.__version__, "seconds": time.time() - started,
            "command": " ".join(["python", "benchmarks/real_photos.py"] + sys.argv[1:])}
    write_json(os.path.join(args.out, "real_photos.json"), {"meta": meta, "results": results, "instances": records})
    names = [ph.name for ph in photos]
    lines = [f"mIoU (%) on real photographs ({', '.join(f'{n}: {len(ph.masks)}' for n, ph in zip(names, photos))} "
             f"instances; evaluation only; the box: <photo> columns are per-photo means).", "",
             "| model | point mIoU | box mIoU | " + " | ".join(f"box: {n}" for n in names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    for name, summary in results.items():
        point = f"{100 * summary['point']['mIoU']:.1f}" if "point" in summary else "-"
        box = summary["box"]
        lines.append(f"| {name} | {point} | {100 * box['mIoU']:.1f} | "
                     + " | ".join(f"{100 * box['per_photo'][n]:.1f}" for n in names) + " |")
    text = "\n".join(lines) + "\n"
    write_text(os.path.join(args.out, "real_photos.md"), text)
    print(text)


if __name__ == "__main__":
    main()
