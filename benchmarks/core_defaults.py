"""Measure the defaults of the core: VRC's lam_rel, LSC's alpha_init per bit width, and LSC's activation momentum.

Runs on a real SAM2.1 image encoder built from the sam2 package's config (random initialisation: no checkpoint
can be downloaded here) fed with real photographs (scikit-image), on CPU. Writes JSON and a markdown table.

    python benchmarks/core_defaults.py --model sam2.1_hiera_t --size 512
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import numpy as np
import torch

from qsam2_ext.core import (
    ActivationGranularity,
    LSCQuantizer,
    MinMaxQuantizer,
    VRCCalibration,
    WeightGranularity,
    is_linear_like,
    vrc_solve,
    weight_matrix,
)
from qsam2_ext.sam2 import build_model, padding_masks, row_mask
from qsam2_ext.sam2.images import PHOTOS, photo_batch

LAM_RELS = [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
ALPHAS = [1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0]
MOMENTA = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]
BITS = [2, 3, 4, 8]


def encoder_outputs(enc, images):
    with torch.no_grad():
        return [torch.cat([o.flatten() for o in enc(img[None])["backbone_fpn"]]) for img in images]


def sqnr_db(ref, out):
    num = sum(float((r**2).sum()) for r in ref)
    den = sum(float(((r - o) ** 2).sum()) for r, o in zip(ref, out))
    return 10 * np.log10(num / max(den, 1e-30))


def fake_quantize_weights(enc, quantizer_for):
    with torch.no_grad():
        for m in enc.modules():
            if is_linear_like(m):
                w = m.weight
                m.weight.copy_(quantizer_for(w)(w))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam2.1_hiera_t")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--calib", type=int, default=10, help="photos used for calibration; the rest are held out")
    ap.add_argument("--out", default="benchmarks/results/core_defaults")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()

    model = build_model(args.model)
    enc = model.image_encoder
    images = photo_batch(PHOTOS, args.size)
    calib, held = images[: args.calib], images[args.calib :]
    original = copy.deepcopy(enc.state_dict())
    reference = encoder_outputs(enc, held)
    result = {"model": args.model, "size": args.size, "calib_images": args.calib, "held_out_images": len(held),
              "device": "cpu", "torch": torch.__version__}

    # ---- VRC lam_rel: float error and weight-only MinMax PTQ fidelity on held-out photos ---------------------
    with padding_masks(), VRCCalibration.for_model(enc, row_masks=row_mask) as cal, torch.no_grad():
        for img in calib:
            enc(img[None])
    layers = {n: m for n, m in enc.named_modules() if is_linear_like(m)}

    def per_channel_minmax(bits):
        return lambda w: MinMaxQuantizer(bits, WeightGranularity.for_weight(w))

    rows = []
    for lam_rel in [None] + LAM_RELS:
        enc.load_state_dict(original)
        if lam_rel is not None:
            with torch.no_grad():
                for name, m in layers.items():
                    new, _ = vrc_solve(weight_matrix(m), cal.observers[name].gram, lam_rel)
                    m.weight.copy_(new.reshape(m.weight.shape))
        float_sqnr = sqnr_db(reference, encoder_outputs(enc, held))
        calibrated = copy.deepcopy(enc.state_dict())
        row = {"lam_rel": lam_rel, "float_sqnr_db": float_sqnr}
        for bits in (2, 3, 4):
            enc.load_state_dict(calibrated)
            fake_quantize_weights(enc, per_channel_minmax(bits))
            row[f"w{bits}_minmax_sqnr_db"] = sqnr_db(reference, encoder_outputs(enc, held))
        rows.append(row)
        print(row, flush=True)
    result["vrc_lambda"] = rows
    enc.load_state_dict(original)

    # ---- LSC alpha_init for weights: relative MSE of per-channel LSC over all encoder linear weights -----------
    weights = [weight_matrix(m).detach() for m in layers.values()]
    alpha_w = {}
    for bits in BITS:
        errs = {}
        for a in ALPHAS:
            num = den = 0.0
            for w in weights:
                q = LSCQuantizer(bits, WeightGranularity.for_weight(w), alpha_init=a)
                with torch.no_grad():
                    num += float(((q(w) - w) ** 2).sum())
                den += float((w**2).sum())
            errs[a] = num / den
        alpha_w[bits] = {"rel_mse": errs, "best_alpha": min(errs, key=errs.get)}
    result["lsc_weight_alpha"] = alpha_w

    # ---- activations: capture layer inputs on held-out photos ------------------------------------------------
    captured = {n: [] for n in layers}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: captured[n].append(a[0].detach().clone()))
             for n, m in layers.items()]
    encoder_outputs(enc, images)  # calibration photos first, then held-out: one batch per photo
    for h in hooks:
        h.remove()

    alpha_a = {}
    for bits in BITS:
        errs = {}
        for a in ALPHAS:
            num = den = 0.0
            for name, xs in captured.items():
                q = LSCQuantizer(bits, ActivationGranularity(), alpha_init=a, momentum=0.9).train()
                with torch.no_grad():
                    for x in xs[: args.calib]:
                        q(x)
                    q.eval()
                    for x in xs[args.calib :]:
                        num += float(((q(x) - x) ** 2).sum())
                        den += float((x**2).sum())
            errs[a] = num / den
        alpha_a[bits] = {"rel_mse": errs, "best_alpha": min(errs, key=errs.get)}
    result["lsc_activation_alpha"] = alpha_a

    # ---- momentum: EMA of per-tensor mean/std over single-photo batches vs the pooled statistics ----------------
    mom = {}
    for m in MOMENTA:
        errs = []
        for name, xs in captured.items():
            q = LSCQuantizer(4, ActivationGranularity(), momentum=m).train()
            with torch.no_grad():
                for x in xs:
                    q(x)
            pooled = torch.cat([x.flatten() for x in xs])
            errs.append(abs(float(q.running_std) / float(pooled.std(correction=0)) - 1))
        mom[m] = {"mean_rel_std_error": float(np.mean(errs)), "max_rel_std_error": float(np.max(errs))}
    result["lsc_momentum"] = mom
    result["seconds"] = time.time() - t0

    write_outputs(result, args.out)


def write_outputs(result, out):
    lines = [f"# Core defaults on {result['model']} (random init) at {result['size']}², real photos, CPU", "",
             "## VRC lam_rel: held-out encoder SQNR (dB), weights only, per-channel MinMax after VRC", "",
             "| lam_rel | float (VRC only) | W2 | W3 | W4 |", "|---|---:|---:|---:|---:|"]
    for r in result["vrc_lambda"]:
        lam = "no VRC" if r["lam_rel"] is None else f"{r['lam_rel']:g}"
        lines.append(f"| {lam} | {r['float_sqnr_db']:.1f} | {r['w2_minmax_sqnr_db']:.2f} | "
                     f"{r['w3_minmax_sqnr_db']:.2f} | {r['w4_minmax_sqnr_db']:.2f} |")
    for key, title in (("lsc_weight_alpha", "LSC weight alpha (per channel)"),
                       ("lsc_activation_alpha", "LSC activation alpha (per tensor, EMA 0.9)")):
        lines += ["", f"## {title}: relative quantization MSE", "",
                  "| bits | best alpha | " + " | ".join(f"a={a:g}" for a in ALPHAS) + " |",
                  "|---|---:|" + "---:|" * len(ALPHAS)]
        for bits, r in result[key].items():
            lines.append(f"| {bits} | {r['best_alpha']:g} | " + " | ".join(f"{r['rel_mse'][a]:.4f}" for a in ALPHAS) + " |")
    lines += ["", "## LSC activation momentum: |running std / pooled std - 1| after one pass, single-photo batches", "",
              "| momentum | mean | max |", "|---:|---:|---:|"]
    for m, r in result["lsc_momentum"].items():
        lines.append(f"| {m:g} | {r['mean_rel_std_error']:.4f} | {r['max_rel_std_error']:.4f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=1, default=str)), (".md", table)):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out) or ".")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, out + suffix)


if __name__ == "__main__":
    main()
