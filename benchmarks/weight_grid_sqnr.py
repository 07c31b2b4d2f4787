"""Each quantizer's initial low-bit weight grid, layer by layer: output SQNR of ``x W_q^T`` against ``x W^T`` on the
embedded model's image encoder, with and without the heavy-tail transform.

    python benchmarks/weight_grid_sqnr.py                  # 2-bit, presets none / activations / weights / both

Why: on the ``activations`` preset (``qsam2_ext.sam2.heavy_tails``) an outlier input channel scaled by ``s`` is paid
for by its consumers' weight column scaled by ``1/s``: a column 8-64x smaller than the rest of its row. A mid-rise
grid (LSC, MinMax, PACT: levels at odd multiples of half a step, no zero level) rounds those tiny weights to half a
step, and the error is multiplied by the large input; LSQ's mid-tread grid rounds them to zero. This measures it
without training: per Linear layer of the image encoder (what ``accuracy.py`` quantizes), weights only, each
quantizer's own initial grid per output channel, inputs from 8 real photographs (``outlier_stats.inputs``).
Writes ``<out>/weight_grid_sqnr.{md,json}``: median and minimum over layers, in dB.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

from qsam2_ext.core import make_quantizer
from qsam2_ext.core.granularity import WeightGranularity
from qsam2_ext.io import write_json, write_text
from qsam2_ext.sam2.heavy_tails import PRESETS, apply_heavy_tails
from qsam2_ext.sam2.models import DEFAULT_MODEL, build_model, default_checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_methods import _zero_level_lsc  # noqa: E402
from outlier_stats import inputs  # noqa: E402


def weight_quantizer(method: str, bits: int, shape: torch.Size):
    granularity = WeightGranularity(*shape)
    return _zero_level_lsc()(bits, granularity) if method == "lsc0" else make_quantizer(method, bits, granularity)

METHODS = ("lsc", "lsc0", "lsq", "minmax", "pact")  # lsc0: LSC with a zero level (accuracy.py's w_zero_level)


def sqnr_db(y: torch.Tensor, y_q: torch.Tensor) -> float:
    return 10 * torch.log10(y.pow(2).mean() / (y - y_q).pow(2).mean().clamp_min(1e-30)).item()


def layer_inputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every image-encoder Linear's input on ``images``, as rows of its ``in_features``."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, i[0].detach().reshape(-1, m.in_features)))
             for n, m in model.image_encoder.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model.image_encoder(images)
    for h in hooks:
        h.remove()
    return seen


def measure(preset: str, bits: int, images: torch.Tensor) -> dict[str, list[float]]:
    model = build_model(DEFAULT_MODEL, default_checkpoint()).eval()
    if preset != "none":
        apply_heavy_tails(model, preset)
    xs = layer_inputs(model, images)
    out = {m: [] for m in METHODS}
    for name, layer in model.image_encoder.named_modules():
        if name not in xs:
            continue
        w = layer.weight.detach()
        y = xs[name] @ w.T
        for method in METHODS:
            with torch.no_grad():
                w_q = weight_quantizer(method, bits, w.shape)(w)
            out[method].append(sqnr_db(y, xs[name] @ w_q.T))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=2, choices=(2, 3, 4, 8))
    p.add_argument("--presets", nargs="+", default=["none", "activations", "weights", "both"],
                   choices=["none", *sorted(PRESETS)])
    p.add_argument("--out", default="out/weight_grid_sqnr")
    args = p.parse_args()
    torch.manual_seed(0)
    images = inputs("photos", 256)
    rows = []
    for preset in args.presets:
        for method, values in measure(preset, args.bits, images).items():
            t = torch.tensor(values)
            rows.append({"preset": preset, "method": method, "layers": len(values),
                         "median_db": t.median().item(), "min_db": t.min().item()})
    lines = [f"# {args.bits}-bit weight grids at initialisation, output SQNR per image-encoder Linear "
             f"({DEFAULT_MODEL})", "", f"`python benchmarks/weight_grid_sqnr.py --bits {args.bits}` "
             f"({time.strftime('%Y-%m-%d')}); weights only, per output channel, 8 real photographs at 256².", "",
             "| preset | " + " | ".join(METHODS) + " |", "|---|" + "---:|" * len(METHODS)]
    for preset in args.presets:
        cells = [next(r for r in rows if r["preset"] == preset and r["method"] == m) for m in METHODS]
        lines.append(f"| {preset} | " + " | ".join(f"{c['median_db']:.1f} [{c['min_db']:.1f}]" for c in cells)
                     + " |")
    lines += ["", "Median over layers [minimum], dB. lsc0: LSC's grid moved by under half a step so that a level is 0 "
              "(`accuracy.py --ablations w_zero_level`)."]
    text = "\n".join(lines) + "\n"
    write_json(os.path.join(args.out, "weight_grid_sqnr.json"), {"bits": args.bits, "rows": rows})
    write_text(os.path.join(args.out, "weight_grid_sqnr.md"), text)
    print(text)


if __name__ == "__main__":
    main()
