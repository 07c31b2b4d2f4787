"""Training throughput of the shared QAT loop on 1 vs N GPUs (torchrun DDP over NCCL), or CPU processes over gloo.

    python benchmarks/ddp_throughput.py --procs 1 2                     # GPUs: sam2.1_hiera_t at 1024, 4 per GPU
    python benchmarks/ddp_throughput.py --procs 1 2 --image-size 512 --per-process-batch 8 --steps 40

For each process count it launches ``torchrun --standalone --nproc_per_node=N`` on this file (worker mode) on the
same synthetic SA-1B-layout data (coloured ellipses, written once), keeping the batch per process fixed (weak
scaling), and reads images/s from the run's log: ``(steps - warmup) * global batch`` over the wall time between
the log records of step ``warmup`` and the last step. Without a GPU it falls back to CPU processes (gloo) of one
thread each, and the project's small ``qsam2_mini`` model. Writes ``<out>/results.json`` and
``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

from qsam2_ext.io import write_json, write_text


def worker(args) -> None:
    from qsam2_ext.sam2 import build_model
    from qsam2_ext.sam2.data import open_dataset
    from qsam2_ext.train import TrainConfig, train

    world = int(os.environ.get("WORLD_SIZE", "1"))
    model = build_model(args.model, image_size=args.image_size, overrides=args.override)
    config = TrainConfig(steps=args.steps, batch_size=args.per_process_batch * world, num_workers=args.num_workers,
                         checkpoint_every=args.steps, max_objects=args.max_objects, seed=0)
    train(model, open_dataset("sa1b", args.data), config, args.run_dir, progress=False)


def images_per_second(log_path: str, warmup: int, global_batch: int) -> tuple[float, float]:
    """``(images/s over the steps after warmup, median compute seconds per step)`` from a run's log."""
    with open(log_path) as f:
        records = [json.loads(line) for line in f]
    timed = records[warmup - 1:]
    elapsed = timed[-1]["time"] - timed[0]["time"]
    return (len(timed) - 1) * global_batch / elapsed, statistics.median(r["seconds"] for r in records[warmup:])


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process (GPU) counts to compare")
    p.add_argument("--model", default="sam2.1_hiera_t" if cuda else "configs/qsam2/qsam2_mini.yaml")
    p.add_argument("--image-size", type=int, default=1024 if cuda else 256)
    p.add_argument("--override", action="append", default=[], help="extra Hydra override of the SAM2 config")
    p.add_argument("--per-process-batch", type=int, default=4 if cuda else 2)
    p.add_argument("--steps", type=int, default=30 if cuda else 12)
    p.add_argument("--warmup", type=int, default=5 if cuda else 3, help="steps left out of the timing")
    p.add_argument("--max-objects", type=int, default=8)
    p.add_argument("--images", type=int, default=64, help="synthetic images to write")
    p.add_argument("--num-workers", type=int, default=4 if cuda else 1)
    p.add_argument("--out", default="out/ddp_throughput")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if not 1 <= args.warmup < args.steps:
        p.error("need 1 <= --warmup < --steps")
    if cuda and max(args.procs) > torch.cuda.device_count():
        p.error(f"{max(args.procs)} processes need as many GPUs; this machine has {torch.cuda.device_count()}")

    from qsam2_ext.sam2.synthetic import write_image_split

    data = os.path.join(args.out, "data")
    if not os.path.isdir(data):
        write_image_split(data, args.images, seed=0, size=args.image_size)
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, 1 thread per process, gloo)"
    runs = []
    for procs in args.procs:
        run_dir = os.path.join(args.out, f"run_{procs}")
        for old in ("checkpoint.pt", "log.jsonl"):  # a fresh run each time
            if os.path.exists(os.path.join(run_dir, old)):
                os.remove(os.path.join(run_dir, old))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                   os.path.abspath(__file__), "--worker", "--data", data, "--run-dir", run_dir,
                   "--model", args.model, "--image-size", str(args.image_size), "--steps", str(args.steps),
                   "--per-process-batch", str(args.per_process_batch), "--num-workers", str(args.num_workers),
                   "--max-objects", str(args.max_objects)] + [f"--override={o}" for o in args.override]
        env = dict(os.environ)
        if not cuda:  # one thread per process, as torchrun sets for several: spinning OpenMP threads on a busy
            env["OMP_NUM_THREADS"] = "1"  # machine slow a step down by 10-30x and would swamp the comparison
        print(f"{procs} process(es): {' '.join(command)}", flush=True)
        subprocess.run(command, check=True, env=env)
        batch = args.per_process_batch * procs
        ips, step_s = images_per_second(os.path.join(run_dir, "log.jsonl"), args.warmup, batch)
        runs.append({"procs": procs, "global_batch": batch, "images_per_s": ips, "median_step_s": step_s})
    base = runs[0]["images_per_s"] / runs[0]["procs"]
    for r in runs:
        r["speedup_vs_1"] = r["images_per_s"] / base
        r["efficiency"] = r["speedup_vs_1"] / r["procs"]
    results = {"device": device, "backend": "nccl" if cuda else "gloo", "model": args.model,
               "image_size": args.image_size, "per_process_batch": args.per_process_batch, "steps": args.steps,
               "warmup": args.warmup, "overrides": args.override, "runs": runs}
    write_json(os.path.join(args.out, "results.json"), results)
    lines = [f"Training throughput, {args.model} at {args.image_size}px, {args.per_process_batch} images per process, "
             f"{device}", "", "| processes | global batch | images/s | speed-up | efficiency | median step (s) |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['procs']} | {r['global_batch']} | {r['images_per_s']:.2f} | {r['speedup_vs_1']:.2f}x | "
              f"{100 * r['efficiency']:.0f}% | {r['median_step_s']:.3f} |" for r in runs]
    table = "\n".join(lines) + "\n"
    write_text(os.path.join(args.out, "results.md"), table)
    print(table)


if __name__ == "__main__":
    main()
