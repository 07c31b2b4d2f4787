"""Which fine-tuning recipe gives the embedded model SAM2-like heavy tails without costing its float accuracy?

    python benchmarks/outlier_recipes.py --steps 300 --batch-size 4 --jobs 2      # CPU: ~13 min a recipe (2 loaded cores)
    python benchmarks/outlier_recipes.py --recipes control outliers --steps 2200 --batch-size 64   # GPU

Every recipe fine-tunes the same float checkpoint (default: the embedded ``qsam2_mini``) with the project's
training loop (``qsam2_ext.train``) on the synthetic training split (seed 0), image mode, for the same steps and
batch; only the optimizer settings differ (``RECIPES``). After training: the tail statistics of the targeted
image-encoder layers (weights and layer inputs on 8 held-out scenes; ``benchmarks/outlier_stats.py``) and the
float box and point mIoU on the held-out split (seed 1000). The untouched checkpoint is the first row.
Writes ``<out>/outlier_recipes.{json,md}``; ``--keep DIR`` also keeps each trained checkpoint as
``DIR/outlier_recipes_<recipe>.pt``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from outlier_stats import activation_stats, inputs, summary_cells, weight_rows  # noqa: E402

from qsam2_ext.io import atomic_write, write_json, write_text  # noqa: E402
from qsam2_ext.train.fine_tune import FINE_TUNE_RECIPES  # noqa: E402

TRAIN_SEED, HELD_OUT_SEED = 0, 1000
RECIPES = FINE_TUNE_RECIPES  # name -> TrainConfig settings (see qsam2_ext/train/fine_tune.py)


def run(recipe: str, checkpoint: str, splits: dict, steps: int, batch_size: int, threads: int, keep: str) -> dict:
    import logging

    from qsam2_ext.evaluate import evaluate
    from qsam2_ext.sam2.data import open_dataset
    from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, build_model
    from qsam2_ext.train import TrainConfig, train

    logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.time()
    model = build_model(DEFAULT_MODEL_CONFIG, checkpoint, device=device)
    last = {}
    if recipe != "none":
        config = TrainConfig(steps=steps, batch_size=batch_size, num_workers=1, checkpoint_every=steps,
                             **RECIPES[recipe])
        with tempfile.TemporaryDirectory() as run_dir:
            last = train(model, open_dataset("sa1b", splits["train"]), config, run_dir, device=device,
                         progress=False)["last"]
        if keep:
            state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
            atomic_write(os.path.join(keep, f"outlier_recipes_{recipe}.pt"),
                         lambda tmp: torch.save({"model": state}, tmp))
    train_seconds = time.time() - started
    model.eval()
    weights = weight_rows(model)
    acts = activation_stats(model, inputs("scenes", model.image_size).to(device))
    layers = [{**w, "activation": acts[fqn]} for fqn, w in weights.items()]
    results = evaluate(model, open_dataset("sa1b", splits["eval"]), progress=False)["results"]
    return {"recipe": recipe, "settings": RECIPES.get(recipe, {}), "box_mIoU": results["box"]["mIoU"],
            "point_mIoU": results["point"]["mIoU"], "final_loss": last.get("loss"), "train_seconds": train_seconds,
            "seconds": time.time() - started, "layers": layers}


def markdown(rows: list[dict], meta: dict) -> str:
    from outlier_stats import STATS

    lines = [f"Fine-tuning recipes from {meta['checkpoint']} ({meta['steps']} steps of {meta['batch_size']} images, "
             f"{meta['device']}); float mIoU on {meta['eval_images']} held-out images; layer statistics: median [max] "
             f"over the {len(rows[0]['layers'])} targeted layers, inputs = {meta['stat_images']} held-out scenes.", "",
             "| recipe | box mIoU | point mIoU | " + " | ".join(c for c, _ in STATS) + " |",
             "|---|---:|---:|" + "---:|" * len(STATS)]
    for r in rows:
        lines.append(f"| {r['recipe']} | {100 * r['box_mIoU']:.1f} | {100 * r['point_mIoU']:.1f} | "
                     + " | ".join(summary_cells(r["layers"])) + " |")
    lines += ["", "Settings (everything else: the TrainConfig defaults):", ""]
    lines += [f"- `{r['recipe']}`: {r['settings'] or 'the checkpoint, untrained'}" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    from qsam2_ext.errors import BadFileError
    from qsam2_ext.sam2.models import check_checkpoint, default_checkpoint
    from qsam2_ext.sam2.synthetic import write_split

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--checkpoint", help="float checkpoint to start from (default: the embedded qsam2_mini)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--eval-images", type=int, default=100)
    p.add_argument("--jobs", type=int, default=1, help="recipes trained at once (processes of --threads each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default="out/outlier_recipes_data")
    p.add_argument("--keep", metavar="DIR", default="",
                   help="keep each trained checkpoint as DIR/outlier_recipes_<recipe>.pt (not kept by default)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    try:  # a bad file fails here, in one line, before any work
        checkpoint = check_checkpoint(args.checkpoint or default_checkpoint())
    except BadFileError as e:
        p.error(str(e))
    started = time.time()
    splits = {"train": write_split("images", os.path.join(args.data, f"train_{args.train_images}"),
                                   args.train_images, TRAIN_SEED, 2),
              "eval": write_split("images", os.path.join(args.data, f"eval_{args.eval_images}"), args.eval_images,
                                  HELD_OUT_SEED, 2)}
    os.makedirs(args.out, exist_ok=True)
    keep = args.keep
    if keep:
        os.makedirs(keep, exist_ok=True)
    names = ["none"] + [r for r in args.recipes]
    ctx = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        futures = [pool.submit(run, name, checkpoint, splits, args.steps, args.batch_size, args.threads, keep)
                   for name in names]
        rows = []
        for future in futures:
            rows.append(future.result())
            r = rows[-1]
            print(f"[{time.time() - started:5.0f} s] {r['recipe']}: box {r['box_mIoU']:.3f} point "
                  f"{r['point_mIoU']:.3f} | " + " | ".join(summary_cells(r["layers"])), flush=True)
    meta = {"checkpoint": args.checkpoint or "embedded qsam2_mini", "steps": args.steps,
            "batch_size": args.batch_size, "train_images": args.train_images, "eval_images": args.eval_images,
            "stat_images": 8, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
            "torch": torch.__version__, "seconds": time.time() - started,
            "command": " ".join(["python", "benchmarks/outlier_recipes.py"] + sys.argv[1:])}
    write_json(os.path.join(args.out, "outlier_recipes.json"), {"meta": meta, "rows": rows})
    text = markdown(rows, meta)
    write_text(os.path.join(args.out, "outlier_recipes.md"), text)
    print(text)


if __name__ == "__main__":
    main()
