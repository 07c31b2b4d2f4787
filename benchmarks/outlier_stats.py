"""Weight and activation tail statistics of the image-encoder layers that get quantized (the property Q-SAM2's VRC
and LSC target): per layer, excess kurtosis, the share of values beyond 6σ, and max/std (``qsam2_ext.core.stats``).

    python benchmarks/outlier_stats.py                       # CPU, a minute or two; writes benchmarks/results/
    python benchmarks/outlier_stats.py --models qsam2_mini --inputs photos
    python benchmarks/outlier_stats.py --models qsam2_mini --checkpoint runs/x/qsam2_mini.pt --tag x
    python benchmarks/outlier_stats.py --models qsam2_mini --heavy-tails both --tag heavy_tails   # before / after

Models: the embedded ``qsam2_mini`` as trained (the default checkpoint), the same architecture at random
initialisation (the control: what training added), and the SAM2.1 architectures (``sam2.1_hiera_t/b+/l``) at
random initialisation: no SAM2.1 checkpoint is reachable here. Random initialisation shows what the architecture
alone does to activations (LayerNorm, GELU, attention, residual growth with depth, on real photographs); its weights
are PyTorch's default uniform initialisation (excess kurtosis -1.2, max/std √3) by construction, so it can show
nothing of the heavy-tailed *trained* weights, nor of the outlier channels that training creates in activations.

Layers: the accuracy benchmark's targets (every Linear and 1x1 Conv2d of the Hiera trunk and FPN neck). Weights:
whole-tensor statistics, plus the mean over output channels of the per-channel max/std (what a per-channel
quantizer's range has to cover). Activations: the layer's input (what the A-bits quantize), whole tensor, with
Hiera's window-padding rows left out. Inputs: ``photos``, 8 real photographs from scikit-image, or ``scenes``, 8
held-out synthetic scenes (seed 1000, never trained on), at the model's input size (256²).

``--heavy-tails PRESET``: each model is measured as it is and again after ``qsam2_ext.sam2.heavy_tails`` (a
function-preserving per-channel rescale that gives it outlier channels), in rows named ``<model> + <preset>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import numpy as np
import torch

from qsam2_ext.core.calibration import input_rows, is_linear_like, weight_matrix
from qsam2_ext.core.stats import OUTLIER_SIGMAS, tail_stats
from qsam2_ext.errors import BadFileError
from qsam2_ext.io import write_json, write_text
from qsam2_ext.sam2 import hiera
from qsam2_ext.sam2.heavy_tails import PRESETS, apply_heavy_tails
from qsam2_ext.sam2.images import photo_batch
from qsam2_ext.sam2.models import DEFAULT_MODEL, build_model, check_checkpoint, default_checkpoint

MODELS = (DEFAULT_MODEL, DEFAULT_MODEL + "@init", "sam2.1_hiera_t", "sam2.1_hiera_b+", "sam2.1_hiera_l")
INPUTS = ("photos", "scenes")
STAT_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "clock", "moon", "gravel")
HELD_OUT_SEED = 1000  # the synthetic held-out split (scripts/train_default_model.py)


def load(name: str, size: int, checkpoint: Optional[str] = None) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == DEFAULT_MODEL:
        return build_model(DEFAULT_MODEL, checkpoint or default_checkpoint()).eval()
    config = DEFAULT_MODEL if name == DEFAULT_MODEL + "@init" else name
    return build_model(config, image_size=size).eval()


def inputs(kind: str, size: int) -> torch.Tensor:
    if kind == "photos":
        return photo_batch(STAT_PHOTOS, size)
    from sam2.utils.transforms import SAM2Transforms

    from qsam2_ext.sam2.synthetic import render_scene

    transforms = SAM2Transforms(resolution=size, mask_threshold=0.0)
    return torch.stack([transforms(render_scene(HELD_OUT_SEED, i, size)[0]) for i in range(len(STAT_PHOTOS))])


def layer_kind(fqn: str) -> tuple[str, str]:
    """``(kind, block)`` of a targeted layer name: qkv / attn.proj / fc1 / fc2 / transition / neck."""
    parts = fqn.split(".")
    if parts[0] == "neck":
        return "neck", ""
    block = parts[2]
    tail = ".".join(parts[3:])
    return {"attn.qkv": "qkv", "attn.proj": "attn.proj", "mlp.layers.0": "fc1", "mlp.layers.1": "fc2",
            "proj": "transition"}[tail], block


def stage_of(model, block: str) -> str:
    if block == "":
        return "neck"
    ends = model.image_encoder.trunk.stage_ends
    return str(1 + next(s for s, end in enumerate(ends) if int(block) <= end))


def weight_rows(model) -> dict[str, dict]:
    rows = {}
    for fqn, module in model.image_encoder.named_modules():
        if not is_linear_like(module):
            continue
        w = weight_matrix(module)
        kind, block = layer_kind(fqn)
        rows[fqn] = {"layer": fqn, "kind": kind, "block": block, "stage": stage_of(model, block),
                     "shape": list(w.shape), "weight": tail_stats(w).as_floats(),
                     "weight_row_max_over_std": float(tail_stats(w, dim=1).max_over_std.nanmean())}
    return rows


@torch.no_grad()
def activation_stats(model, images: torch.Tensor) -> dict[str, dict]:
    """Input statistics of every targeted layer over one forward of the image encoder on ``images``."""
    stats, handles = {}, []

    def hook(fqn):
        def pre_hook(module, args):
            rows = input_rows(module, args[0])
            rows = rows.reshape(-1, rows.shape[-1])
            mask = hiera.row_mask(module)  # Hiera window padding: not tokens
            if mask is not None:
                rows = rows[mask.reshape(-1)]
            stats[fqn] = tail_stats(rows).as_floats()
        return pre_hook

    for fqn, module in model.image_encoder.named_modules():
        if is_linear_like(module):
            handles.append(module.register_forward_pre_hook(hook(fqn)))
    try:
        with hiera.padding_masks():
            model.image_encoder(images)
    finally:
        for h in handles:
            h.remove()
    return stats


def _summary(layers: list[dict], key) -> tuple[float, float]:
    values = np.array([key(r) for r in layers], dtype=np.float64)
    return float(np.nanmedian(values)), float(np.nanmax(values))


STATS = (  # column, value of a layer row
    ("W kurtosis", lambda r: r["weight"]["kurtosis"]),
    ("W >6σ (ppm)", lambda r: 1e6 * r["weight"]["outlier_ratio"]),
    ("W max/std", lambda r: r["weight"]["max_over_std"]),
    ("W row max/std", lambda r: r["weight_row_max_over_std"]),
    ("A kurtosis", lambda r: r["activation"]["kurtosis"]),
    ("A >6σ (ppm)", lambda r: 1e6 * r["activation"]["outlier_ratio"]),
    ("A max/std", lambda r: r["activation"]["max_over_std"]),
)


def summary_cells(layers: list[dict]) -> list[str]:
    """The STATS columns of a group of layer rows: median [max] over the layers."""
    return [f"{m:.2f} [{x:.1f}]" if "ppm" not in c else f"{m:.0f} [{x:.0f}]"
            for c, f in STATS for m, x in [_summary(layers, f)]]


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Image-encoder layer statistics (median [max] over the targeted layers of each model; "
             "W = weight, A = layer input; excess kurtosis: 0 for a Gaussian, -1.2 for a uniform; "
             f">{OUTLIER_SIGMAS:g}σ in parts per million; "
             f"{meta['size']}², {meta['images']} images; {meta['device']}).", "",
             "| model | inputs | layers | " + " | ".join(c for c, _ in STATS) + " |",
             "|---|---|---:|" + "---:|" * len(STATS)]
    groups = sorted({(r["model"], r["inputs"]) for r in rows},
                    key=lambda g: (MODELS.index(g[0].split(" ")[0]), g[0], g[1]))
    for model, kind in groups:
        layers = [r for r in rows if r["model"] == model and r["inputs"] == kind]
        lines.append(f"| {model} | {kind} | {len(layers)} | " + " | ".join(summary_cells(layers)) + " |")
    lines += ["", "By stage (median [max]; stage 1 is the first, highest-resolution Hiera stage):", "",
              "| model | inputs | stage | layers | W kurtosis | W max/std | A kurtosis | A max/std |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    picked = [STATS[0], STATS[2], STATS[4], STATS[6]]
    for model, kind in groups:
        if kind != "photos":
            continue
        layers = [r for r in rows if r["model"] == model and r["inputs"] == kind]
        for stage in sorted({r["stage"] for r in layers}, key=lambda s: (s == "neck", s)):
            chosen = [r for r in layers if r["stage"] == stage]
            cells = [f"{m:.2f} [{x:.1f}]" for _, f in picked for m, x in [_summary(chosen, f)]]
            lines.append(f"| {model} | {kind} | {stage} | {len(chosen)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    p.add_argument("--size", type=int, default=256, help="input side of the SAM2.1 architectures (qsam2_mini: 256)")
    p.add_argument("--checkpoint", help=f"a float {DEFAULT_MODEL} checkpoint measured in the {DEFAULT_MODEL} row "
                                        "instead of the embedded one (the row is named after the file)")
    p.add_argument("--heavy-tails", nargs="+", default=[], choices=sorted(PRESETS),
                   help="also measure each model after this function-preserving heavy-tail transform (rows '+ preset')")
    p.add_argument("--tag", default="", help="write outlier_stats_<tag>.{md,json} (default: outlier_stats.*)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if args.tag and not args.tag.replace("_", "").replace("-", "").isalnum():
        p.error(f"--tag must be letters, digits, '-' or '_', got {args.tag!r}")
    if args.checkpoint:  # a bad file fails here, in one line, before any work
        try:
            check_checkpoint(args.checkpoint, DEFAULT_MODEL)
        except BadFileError as e:
            p.error(str(e))
    started, rows = time.time(), []
    for model_name in args.models:
        model = load(model_name, args.size, args.checkpoint)
        name = model_name
        if args.checkpoint and model_name == DEFAULT_MODEL:
            name = f"{DEFAULT_MODEL} ({os.path.basename(args.checkpoint)})"
        variants = [(name, model)]
        for preset in args.heavy_tails:
            transformed = load(model_name, args.size, args.checkpoint)
            apply_heavy_tails(transformed, preset)
            variants.append((f"{name} + {preset}", transformed))
        for name, model in variants:
            weights = weight_rows(model)
            for kind in args.inputs:
                t0 = time.time()
                acts = activation_stats(model, inputs(kind, model.image_size))
                rows += [{"model": name, "inputs": kind, **w, "activation": acts[fqn]} for fqn, w in weights.items()]
                print(f"{name} on {kind}: {len(weights)} layers ({time.time() - t0:.0f} s)", flush=True)
    meta = {"size": args.size, "checkpoint": args.checkpoint, "heavy_tails": args.heavy_tails,
            "images": len(STAT_PHOTOS), "photos": list(STAT_PHOTOS),
            "scenes": f"render_scene({HELD_OUT_SEED}, 0..{len(STAT_PHOTOS) - 1})", "outlier_sigmas": OUTLIER_SIGMAS,
            "device": f"CPU ({os.cpu_count()} cores)", "torch": torch.__version__,
            "seconds": time.time() - started,
            "command": " ".join(["python", "benchmarks/outlier_stats.py"] + sys.argv[1:])}
    stem = os.path.join(args.out, "outlier_stats" + (f"_{args.tag}" if args.tag else ""))
    write_json(stem + ".json", {"meta": meta, "rows": rows})
    text = markdown(rows, meta)
    write_text(stem + ".md", text)
    print(text)


if __name__ == "__main__":
    main()
