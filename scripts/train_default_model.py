"""Retrain the embedded default model, qsam2_mini, from random initialisation on the project's synthetic data.

    python scripts/train_default_model.py --out runs/qsam2_mini        # one H200: 6 minutes (359 s)
    python scripts/train_default_model.py --data-style photo --out runs/qsam2_mini_v2   # v2 data (photo-like)
    python scripts/train_default_model.py --recipe outliers --out runs/qsam2_mini_outliers  # heavy tails (below)

1. Data: the synthetic generator (``qsam2_ext.sam2.synthetic``) writes the training split from seed 0 (images in
   the SA-1B layout, clips in the DAVIS layout) and the held-out split from seed 1000, in parallel processes.
   Scenes are a pure function of (seed, index), so the same command writes the same files everywhere.
   ``--data-style photo`` trains on photo-like scenes instead (shading, shadows, soft edges, colour jitter, blur,
   noise, JPEG; no photo of the real-photo evaluation set); the held-out split stays v1's, for comparison.
2. Image-mode training with the project's loop (boxes and points, SAM2's losses), then video-clip training from
   those weights (frame 0 prompted by a mask, box or point; the next frames through SAM2's memory).
3. Held-out evaluation through SAM2's predictors: box and point mIoU, J&F (first-frame masks); and point and box
   mIoU on the real-photo evaluation set (``qsam2_ext.sam2.real_photos``; never trained on).
``--recipe outliers`` fine-tunes a trained checkpoint (``--init``, default: the embedded model) instead of training
from random initialisation: both stages with the settings of ``qsam2_ext.train.fine_tune.FINE_TUNE_RECIPES``
(no weight decay, no gradient clipping, a larger learning rate; the video stage at a third of it), meant to give the
model heavier-tailed activations and weights, closer to SAM2's (what it achieved so far: docs/accuracy.md).
4. ``<out>/qsam2_mini.pt`` ({"model": state_dict}, float32) and ``<out>/qsam2_mini.json`` (metrics, settings,
   command). ``--install`` copies both next to the config, where ``default_checkpoint()`` finds them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import torch

from qsam2_ext.evaluate import evaluate
from qsam2_ext.errors import BadFileError
from qsam2_ext.io import atomic_write, write_json
from qsam2_ext.sam2.data import open_dataset
from qsam2_ext.sam2.models import (DEFAULT_MODEL_CONFIG, build_model, check_checkpoint, default_checkpoint,
                                   image_predictor)
from qsam2_ext.sam2.real_photos import real_photos, score, summarise
from qsam2_ext.sam2.synthetic import STYLES, write_split
from qsam2_ext.train import TrainConfig, train
from qsam2_ext.train.checkpoint import checkpoint_path
from qsam2_ext.train.fine_tune import FINE_TUNE_RECIPES

TRAIN_SEED, HELD_OUT_SEED = 0, 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (training logs, checkpoint, metrics)")
    p.add_argument("--data-style", choices=STYLES, default="synthetic",
                   help="training scenes: v1's synthetic ones, or photo-like (v2); the held-out split is v1's")
    p.add_argument("--data", help="where the generated splits live (default: <out>/data); reused if present")
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--train-clips", type=int, default=2000)
    p.add_argument("--eval-images", type=int, default=200)
    p.add_argument("--eval-clips", type=int, default=30)
    p.add_argument("--image-steps", type=int, default=2200)
    p.add_argument("--video-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64, help="images per image-mode step")
    p.add_argument("--clip-batch-size", type=int, default=8, help="clips per video-mode step")
    p.add_argument("--clip-length", type=int, default=4)
    p.add_argument("--recipe", choices=("scratch", "outliers"), default="scratch",
                   help="scratch: train from random initialisation; outliers: fine-tune --init for heavy tails")
    p.add_argument("--init", help="--recipe outliers: the float checkpoint to fine-tune (default: the embedded model)")
    p.add_argument("--lr", type=float, help="peak learning rate of the image stage (default: 2e-3, or the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="training seed (data order, prompts, initialisation)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data processes")
    p.add_argument("--install", action="store_true", help="copy the result to the package's default checkpoint")
    args = p.parse_args()
    init = None
    if args.recipe == "scratch" and args.init:
        p.error("--init needs --recipe outliers (the scratch recipe starts from random initialisation)")
    if args.recipe != "scratch":
        try:  # a bad file fails here, in one line, before the data is written
            init = check_checkpoint(args.init or default_checkpoint())
        except BadFileError as e:
            p.error(str(e))
    started = time.time()
    cuda = torch.cuda.is_available()
    data = args.data or os.path.join(args.out, "data")
    suffix = "" if args.data_style == "synthetic" else "_" + args.data_style
    splits = {
        "train_images": write_split("images", os.path.join(data, "train_images" + suffix), args.train_images,
                                     TRAIN_SEED, args.workers, style=args.data_style),
        "train_clips": write_split("clips", os.path.join(data, "train_clips" + suffix), args.train_clips, TRAIN_SEED,
                                    args.workers, style=args.data_style),
        "eval_images": write_split("images", os.path.join(data, "eval_images"), args.eval_images, HELD_OUT_SEED,
                                    args.workers),
        "eval_clips": write_split("clips", os.path.join(data, "eval_clips"), args.eval_clips, HELD_OUT_SEED,
                                   args.workers),
    }
    data_seconds = time.time() - started

    torch.manual_seed(args.seed)  # the initial weights
    model = build_model(DEFAULT_MODEL_CONFIG, init)
    if args.recipe == "scratch":
        optimizer = dict(lr=2e-3, weight_decay=0.05, min_lr_ratio=0.05, grad_clip=1.0)
        warmup = {"image": 200, "video": 50}
    else:
        optimizer = dict(FINE_TUNE_RECIPES[args.recipe])
        warmup = {"image": optimizer["warmup_steps"], "video": optimizer.pop("warmup_steps")}
    if args.lr is not None:
        optimizer["lr"] = args.lr
    common = dict(**optimizer, seed=args.seed, num_workers=args.workers, checkpoint_every=500)
    image_config = TrainConfig(steps=args.image_steps, batch_size=args.batch_size, warmup_steps=warmup["image"],
                               max_objects=8, box_prob=0.5, **common)
    video_config = TrainConfig(steps=args.video_steps, batch_size=args.clip_batch_size, warmup_steps=warmup["video"],
                               clip_length=args.clip_length, max_objects=3, mask_prob=0.3, box_prob=0.5,
                               **{**common, "lr": optimizer["lr"] / 3})
    stages = {}
    for name, config, dataset in (
        ("image", image_config, open_dataset("sa1b", splits["train_images"])),
        ("video", video_config, open_dataset("video", splits["train_clips"], clip_length=args.clip_length)),
    ):
        t0 = time.time()
        stage_dir = os.path.join(args.out, f"train_{name}")
        resume = os.path.exists(checkpoint_path(stage_dir))  # continue an interrupted run, else start
        summary = train(model, dataset, config, stage_dir, resume=resume, progress=False)
        stages[name] = {"config": config.to_dict(), "seconds": time.time() - t0, "last": summary["last"]}
        print(f"{name} stage: {config.steps} steps in {stages[name]['seconds']:.0f} s, "
              f"final loss {summary['last'].get('loss', float('nan')):.4f}", flush=True)

    ckpt = os.path.join(args.out, "qsam2_mini.pt")
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    atomic_write(ckpt, lambda tmp: torch.save({"model": state}, tmp))

    t0 = time.time()
    device = "cuda" if cuda else "cpu"
    image_model = build_model(DEFAULT_MODEL_CONFIG, ckpt, device=device)
    images = evaluate(image_model, open_dataset("sa1b", splits["eval_images"]), progress=False)
    video_model = build_model(DEFAULT_MODEL_CONFIG, ckpt, device=device, video=True)
    clips = evaluate(video_model, open_dataset("video", splits["eval_clips"]), progress=False)
    real = summarise(score(image_predictor(image_model), real_photos()))
    metrics = {
        "box_mIoU": images["results"]["box"]["mIoU"], "point_mIoU": images["results"]["point"]["mIoU"],
        "instances": images["results"]["box"]["instances"], "J&F": clips["results"]["J&F"],
        "J": clips["results"]["J"], "F": clips["results"]["F"], "objects": clips["results"]["objects"],
    }
    real_photo_metrics = {"box_mIoU": real["box"]["mIoU"], "point_mIoU": real["point"]["mIoU"],
                          "instances": real["box"]["instances"], "box_per_photo": real["box"]["per_photo"]}
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    commit = git.stdout.strip() if git.returncode == 0 else None  # None where the checkout is not a git repo
    report = {
        "config": DEFAULT_MODEL_CONFIG, "recipe": args.recipe, "init": init,
        "fine_tune": FINE_TUNE_RECIPES.get(args.recipe), "held_out": metrics, "real_photos": real_photo_metrics,
        "data": {"style": args.data_style, "train_seed": TRAIN_SEED, "held_out_seed": HELD_OUT_SEED, **{k: v for k, v in vars(args).items()
                                                                             if k.startswith(("train_", "eval_"))}},
        "stages": stages, "seconds": {"data": data_seconds, "evaluation": time.time() - t0,
                                       "total": time.time() - started},
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__, "commit": commit,
        "command": "python scripts/train_default_model.py " + " ".join(sys.argv[1:]),
        "parameters": sum(v.numel() for v in state.values()), "checkpoint_bytes": os.path.getsize(ckpt),
    }
    write_json(os.path.join(args.out, "qsam2_mini.json"), report)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    print("real photos:", {k: round(v, 4) if isinstance(v, float) else v for k, v in real_photo_metrics.items()})
    print(f"total {report['seconds']['total']:.0f} s; checkpoint {ckpt} ({report['checkpoint_bytes'] / 1e6:.1f} MB)")
    if args.install:
        target = default_checkpoint()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(ckpt, target)
        shutil.copyfile(os.path.join(args.out, "qsam2_mini.json"), os.path.splitext(target)[0] + ".json")


if __name__ == "__main__":
    main()
