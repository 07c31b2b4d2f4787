"""Q-SAM2 inside an NNCF pipeline on the sam2.1_hiera_t image encoder, end to end:

    nncf.quantize (+ VRC step, per the recipe) -> Q-SAM2 hooks -> a few QAT steps -> baked inference weights
    -> OpenVINO IR (optional extra): integer weight constants and FakeQuantize inputs, read back from the file and
    compared with the torch model.

    python examples/nncf_sam2_hiera_t.py [--checkpoint sam2.1_hiera_t.pt] [--recipe sam2.1_hiera_t_w4a8]
        [--size 256] [--steps 3] [--fp16] [--out out/nncf_hiera_t]

Without a checkpoint the encoder keeps its random initialisation (the code path is the same). QAT here is feature
distillation from the float encoder on real photos (scikit-image), as a stand-in for the project's training loop.
NNCF compiles its CPU extension on first use and gives up after ``NNCF_EXTENSION_LOAD_TIMEOUT`` seconds (60 by
default): this script raises that to 900 unless it is set, since a busy 2-core machine can take minutes. Its
report (``<out>/report.json``) gives the times and the torch-vs-OpenVINO agreement of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")  # read when NNCF first builds its extension


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--recipe", default="sam2.1_hiera_t_w4a8")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="out/nncf_hiera_t")
    p.add_argument("--keep-nncf", action="store_true",
                   help="keep NNCF's quantizers on other tensors (their op-keyed hooks break TorchScript export)")
    p.add_argument("--fp16", action="store_true", help="save the IR's float constants as f16 (compress_to_fp16)")
    args = p.parse_args()

    from qsam2_ext.integrations import nncf as qn
    from qsam2_ext.sam2 import build_model
    from qsam2_ext.sam2.images import PHOTOS, photo_batch

    torch.manual_seed(0)
    report, t0 = {"recipe": args.recipe, "size": args.size, "keep_nncf": args.keep_nncf}, time.time()
    model = build_model("sam2.1_hiera_t", args.checkpoint, image_size=args.size)
    photos = [photo_batch([name], args.size) for name in PHOTOS[:6]]
    calibration, held_out = photos[:4], photos[4:]
    teacher = model.image_encoder.eval()
    quantized = qn.quantize_with_recipe(model, args.recipe, calibration, outside="float",
                                        keep_nncf=args.keep_nncf).image_encoder
    report["prepare_s"] = round(time.time() - t0, 1)

    opt = torch.optim.AdamW([p for p in quantized.parameters() if p.requires_grad], lr=1e-5)
    losses = []
    quantized.train()
    for step in range(args.steps):
        x = calibration[step % len(calibration)]
        with torch.no_grad():
            target = teacher(x)["vision_features"]
        loss = torch.nn.functional.mse_loss(quantized(x)["vision_features"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(round(float(loss), 6))
    report["qat_losses"] = losses

    quantized.eval()
    with torch.no_grad():
        fake = quantized(held_out[0])["vision_features"]
        report["baked"] = len(qn.bake(quantized))
        baked = quantized(held_out[0])["vision_features"]
        ref = teacher(held_out[0])["vision_features"]
    report["baked_equals_fake_quant"] = bool(torch.equal(fake, baked))
    report["sqnr_db_vs_float"] = round(float(10 * torch.log10(ref.pow(2).sum() / (ref - baked).pow(2).sum())), 2)
    os.makedirs(args.out, exist_ok=True)
    try:
        _, export = qn.export_openvino(quantized, held_out[0], os.path.join(args.out, "encoder.xml"),
                                       compress_to_fp16=args.fp16)
        report["openvino"] = export
    except ImportError as e:
        report["openvino"] = f"skipped: {e}"
    report["total_s"] = round(time.time() - t0, 1)
    print(json.dumps(report, indent=2))
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
