"""Segmentation accuracy of quantization methods on the embedded default model (qsam2_mini), against its float self.

    python benchmarks/accuracy.py                      # GPUs: all methods x W2A4/W2A8/W3A8/W4A4/W4A8
    python benchmarks/accuracy.py --seeded-bits W2A4 W2A8 W3A8 W4A4 W4A8   # the grid, 3 seeds everywhere
    python benchmarks/accuracy.py --reduced            # CPU: fewer steps, images, clips and seeds
    python benchmarks/accuracy.py --heavy-tails both   # every row from the float model given outlier channels

Every row starts from the same float checkpoint, quantizes the image encoder with one method (see
``accuracy_methods.py`` for the targeted layers and each method), trains the QAT methods with the project's loop
for the same steps on the same labeled synthetic data (seed 0 split; prompts and order from the row's seed), then
evaluates the packed model on the held-out split (seed 1000): box and point mIoU through ``SAM2ImagePredictor``
and J&F through ``SAM2VideoPredictor`` (first-frame masks), and box and point mIoU on the real-photo evaluation set
(``qsam2_ext.sam2.real_photos``, never trained on). Rows run in parallel worker processes spread over the
GPUs. ``--heavy-tails PRESET`` applies ``qsam2_ext.sam2.heavy_tails`` (a function-preserving per-channel rescale
that gives the encoder activation and/or weight outlier channels) to the float model before every row; the run then
also evaluates the untransformed float model and stops unless both float rows score exactly the same (the
transform's invariant). A row whose training diverges (non-finite loss) is recorded as diverged and the run goes on.
Writes ``<out>/rows.jsonl`` as rows finish, then ``<out>/accuracy.json``, ``<out>/accuracy.md`` and, with
matplotlib, ``<out>/accuracy.png``; ``--rows-from`` writes those three from the rows.jsonl of a run cut short.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Optional

import torch

# the NNCF rows: NNCF builds or loads its CPU extension on first use, which takes over its 60 s default on a loaded
# 2-core machine (workers inherit it)
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_methods import ABLATIONS, METHODS, NNCF, PTQ, quantize  # noqa: E402

from qsam2_ext.io import atomic_write, write_json, write_text  # noqa: E402

BITS = {"W2A16": (2, None), "W2A4": (2, 4), "W2A8": (2, 8), "W3A8": (3, 8), "W4A4": (4, 4), "W4A8": (4, 8)}
DEFAULT_BITS = ("W2A4", "W2A8", "W3A8", "W4A4", "W4A8")  # the grid's settings; W2A16 (weights only) when named
SEEDED = ("W2A4", "W2A8")  # the rows with several seeds by default (mean ± std); --seeded-bits names others
METRICS = ("box_mIoU", "point_mIoU", "J&F", "real_box_mIoU", "real_point_mIoU")
TRAIN_SEED, HELD_OUT_SEED = 0, 1000


@dataclass(frozen=True)
class Job:
    method: str
    bits: str  # a BITS key, or "FP"
    seed: int
    ablation: str = ""  # an ABLATIONS key (Q-SAM2 only)
    untransformed: bool = False  # with --heavy-tails: the float reference row, built without the transform

    @property
    def label(self) -> str:
        if self.untransformed:
            return f"{self.method} (untransformed)"
        return f"{self.method} ({self.ablation})" if self.ablation else self.method


@dataclass(frozen=True)
class Setup:
    config: str
    checkpoint: str
    splits: dict  # train / images / clips folders
    steps: int
    batch_size: int
    lr: float
    quantizer_lr: float
    calibration_images: int
    workers_per_job: int
    video: bool = True  # J&F on the held-out clips (False: NaN, for short CPU runs)
    heavy_tails: str = ""  # a qsam2_ext.sam2.heavy_tails preset applied to the float model of every row


def _write_splits(data: str, train_images: int, eval_images: int, eval_clips: int, style: str) -> dict:
    from qsam2_ext.sam2.synthetic import write_split

    train = os.path.join(data, f"train_{train_images}" + ("" if style == "synthetic" else f"_{style}"))
    return {"train": write_split("images", train, train_images, TRAIN_SEED, os.cpu_count() or 1, style),
            "images": write_split("images", os.path.join(data, f"eval_{eval_images}"), eval_images, HELD_OUT_SEED),
            "clips": write_split("clips", os.path.join(data, f"clips_{eval_clips}"), eval_clips, HELD_OUT_SEED)}


def _calibration_batches(dataset, count: int, image_size: int, device) -> list[torch.Tensor]:
    from sam2.utils.transforms import SAM2Transforms

    transform = SAM2Transforms(resolution=image_size, mask_threshold=0.0)
    images = [transform(dataset.load(i).frames[0]) for i in range(count)]
    return [torch.stack(images[i:i + 4]).to(device) for i in range(0, count, 4)]


def run_job(job: Job, setup: Setup) -> dict:
    """One row: build, quantize (and train), evaluate images and clips. Runs in a worker process."""
    import logging

    from qsam2_ext import load_quantized, storage_report
    from qsam2_ext.errors import NonFiniteError
    from qsam2_ext.evaluate import evaluate
    from qsam2_ext.sam2.data import open_dataset
    from qsam2_ext.sam2.models import build_model, image_predictor
    from qsam2_ext.sam2.real_photos import real_photos, score, summarise
    from qsam2_ext.train import TrainConfig, train

    logging.getLogger().setLevel(logging.WARNING)  # sam2 logs every predictor call at INFO
    device, splits = _DEVICE, setup.splits
    started = time.time()
    torch.manual_seed(job.seed)
    model = build_model(setup.config, setup.checkpoint, device=str(device))
    if setup.heavy_tails and not job.untransformed:
        from qsam2_ext.sam2.heavy_tails import apply_heavy_tails

        apply_heavy_tails(model, setup.heavy_tails)
    train_set = open_dataset("sa1b", splits["train"])
    batches = _calibration_batches(train_set, setup.calibration_images, model.image_size, device)
    config = TrainConfig(steps=setup.steps, batch_size=setup.batch_size, lr=setup.lr,
                         quantizer_lr=setup.quantizer_lr, warmup_steps=max(1, setup.steps // 20), seed=job.seed,
                         num_workers=setup.workers_per_job, checkpoint_every=setup.steps, grad_clip=1.0)

    def train_fn(m):
        with tempfile.TemporaryDirectory() as run_dir:
            train(m, train_set, config, run_dir, device=str(device), progress=False)

    bits, act_bits = BITS.get(job.bits, (None, None))
    try:
        quantize(model, job.method, bits, act_bits, batches, train_fn, **ABLATIONS.get(job.ablation, {}))
    except NonFiniteError as e:  # a method that diverges is a result: the row says so, the run goes on
        return {**asdict(job), "label": job.label, "diverged": str(e), **{m: float("nan") for m in METRICS},
                "model_bytes": float("nan"), "seconds": time.time() - started, "device": str(device),
                "device_name": _device_name(device)}
    quantize_seconds = time.time() - started
    images = evaluate(model, open_dataset("sa1b", splits["images"]), progress=False)
    jf = float("nan")
    if setup.video:
        video = build_model(setup.config, device=str(device), video=True)
        if job.method in NNCF:
            from qsam2_ext.integrations.nncf import transplant

            transplant(model, video)  # through NNCF's get_config / load_from_config
        else:
            load_quantized(video, model.state_dict())  # packed or float weights alike
        jf = evaluate(video, open_dataset("video", splits["clips"]), progress=False)["results"]["J&F"]
    real = summarise(score(image_predictor(model), real_photos()))  # never trained on (docs/real-photos.md)
    size = storage_report(model)
    return {**asdict(job), "label": job.label, "box_mIoU": images["results"]["box"]["mIoU"],
            "point_mIoU": images["results"]["point"]["mIoU"], "J&F": jf,
            "real_box_mIoU": real["box"]["mIoU"], "real_point_mIoU": real["point"]["mIoU"],
            "model_bytes": size["model_bytes"], "packed_bytes": size["packed_bytes"],
            "packed_as_bf16_bytes": size["packed_as_bf16_bytes"], "quantize_seconds": quantize_seconds,
            "seconds": time.time() - started, "device": str(device), "device_name": _device_name(device)}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


_DEVICE = torch.device("cpu")


def _init_worker(devices, threads: int) -> None:
    """Each worker process takes one device from the queue (workers are spread evenly over the GPUs)."""
    import warnings

    global _DEVICE
    warnings.filterwarnings("ignore")
    _DEVICE = torch.device(devices.get())
    torch.set_num_threads(threads)


def check_float_invariant(rows: list[dict]) -> None:
    """With --heavy-tails: the transformed and the untransformed float rows must score exactly the same."""
    pair = [r for r in rows if r["method"] == "fp"]
    plain = [r for r in pair if r.get("untransformed")]
    moved = [r for r in pair if not r.get("untransformed")]
    if len(plain) != 1 or len(moved) != 1:
        raise RuntimeError("--heavy-tails needs exactly one transformed and one untransformed float row")
    same = lambda a, b: a == b or (math.isnan(a) and math.isnan(b))  # noqa: E731
    differ = [m for m in METRICS if not same(plain[0][m], moved[0][m])]
    if differ:
        raise RuntimeError("the heavy-tail transform changed the float model's scores ("
                           + ", ".join(f"{m}: {plain[0][m]!r} -> {moved[0][m]!r}" for m in differ)
                           + "): it must preserve the float function exactly")


def summarize(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (method, bits); relative numbers against the float model."""
    fp = next(r for r in rows if r["method"] == "fp")
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["label"], r["bits"]), []).append(r)
    table = []
    for (label, bits), all_rs in groups.items():
        ok = [r for r in all_rs if not r.get("diverged")]  # seeds whose training diverged are counted apart
        rs = ok or all_rs  # (all diverged: NaN scores)
        entry = {"method": label, "bits": bits, "seeds": len(ok), "diverged": len(all_rs) - len(ok),
                 "model_MB": rs[0]["model_bytes"] / 1e6}
        for metric in METRICS:
            values = [r[metric] for r in rs]
            entry[metric] = statistics.fmean(values)
            finite = len(values) > 1 and all(math.isfinite(v) for v in values)  # (J&F is NaN without clips)
            entry[metric + "_std"] = statistics.stdev(values) if finite else None
            entry[metric + "_of_fp"] = entry[metric] / fp[metric]
        table.append(entry)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(table, key=lambda e: (list(BITS).index(e["bits"]) if e["bits"] in BITS else -1,
                                        order[e["method"].split(" ")[0]], e["method"]))


def markdown(table: list[dict], meta: dict) -> str:
    def cell(e, metric):
        std = e[metric + "_std"]
        return f"{100 * e[metric]:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")

    clips = f"{meta['eval_clips']} clips" if meta.get("video", True) else "no clips: J&F not run"
    tails = (f" with heavy tails ({meta['heavy_tails']}: qsam2_ext.sam2.heavy_tails, applied to the float model of "
             "every row except the untransformed float one)") if meta.get("heavy_tails") else ""
    lines = [f"Accuracy of quantization methods on {meta['model']}{tails} (held-out synthetic split: "
             f"{meta['eval_images']} images, {clips}); {meta['device']}; QAT: {meta['steps']} "
             f"steps of batch {meta['batch_size']}. Quantized: every Linear and 1x1 Conv2d of the image encoder.", "",
             "| bits | method | seeds | box mIoU | point mIoU | J&F | box % of FP | real photos: box | point "
             "| model MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in table:
        seeds = f"{e['seeds']}" + (f" ({e['diverged']} diverged)" if e.get("diverged") else "")
        lines.append(f"| {e['bits']} | {e['method']} | {seeds} | {cell(e, 'box_mIoU')} | "
                     f"{cell(e, 'point_mIoU')} | {cell(e, 'J&F')} | {100 * e['box_mIoU_of_fp']:.1f} | "
                     f"{cell(e, 'real_box_mIoU')} | {cell(e, 'real_point_mIoU')} | {e['model_MB']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    fp = next(e for e in table if e["method"] == "fp")
    video = any(math.isfinite(e["J&F"]) for e in table)  # without clips the second panel shows point prompts
    for ax, metric in zip(axes, ("box_mIoU", "J&F" if video else "point_mIoU")):
        for method in METHODS[1:]:
            points = [(b, e[metric], e[metric + "_std"] or 0) for b in BITS for e in table
                      if e["method"] == method and e["bits"] == b]
            if points:
                ax.errorbar([p[0] for p in points], [p[1] for p in points], [p[2] for p in points],
                            marker="o", capsize=3, label=method)
        ax.axhline(fp[metric], color="k", linestyle="--", label="float")
        ax.set_title(metric)
        ax.set_xlabel("weights / activations")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


def read_rows(path: str, need_float: bool = True) -> list[dict]:
    """The rows of a run's rows.jsonl (``--rows-from``, ``--resume``), checked: each line a JSON object with this
    benchmark's fields. A bad file gets a one-line error naming it."""
    from qsam2_ext.errors import BadFileError

    need = {"method": str, "label": str, "bits": str, "seed": int, "model_bytes": (int, float)}
    need.update({m: (int, float) for m in METRICS})
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if n > 100_000:
                    raise ValueError("more than 100000 rows")
                row = json.loads(line)
                bad = [k for k, t in need.items() if not isinstance(row, dict) or not isinstance(row.get(k), t)]
                if bad:
                    raise ValueError(f"line {n} lacks or mistypes {', '.join(bad)}")
                if (row["bits"] not in BITS and row["bits"] != "FP") or row["method"] not in METHODS:
                    raise ValueError(f"line {n}: unknown method or bits {row['method']!r} {row['bits']!r}")
                rows.append(row)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise BadFileError(path, f"not a rows.jsonl of benchmarks/accuracy.py ({e})") from None
    if need_float and not any(r["method"] == "fp" for r in rows):
        raise BadFileError(path, "no float (fp) row to compare with")
    return rows


def _job_key(row: dict) -> tuple:
    """What identifies a row (a row read back, or ``asdict`` of its ``Job``)."""
    return row["method"], row["bits"], row["seed"], row.get("ablation", ""), bool(row.get("untransformed", False))


def run_rows(args, checkpoint: str, seeds: int, steps: int, batch_size: int, eval_images: int, eval_clips: int,
             train_images: int, gpus: int, jobs_parallel: int) -> list[dict]:
    """Every row of the run in worker processes; rows.jsonl under --out gets each row as it finishes."""
    splits = _write_splits(args.data, train_images, eval_images, eval_clips, args.train_style)
    setup = Setup(args.model, checkpoint, splits, steps, batch_size, args.lr, args.quantizer_lr,
                  args.calibration_images, 2 if gpus else 0, video=not args.no_video,
                  heavy_tails=args.heavy_tails or "")
    jobs = [Job("fp", "FP", 0)] + ([Job("fp", "FP", 0, untransformed=True)] if args.heavy_tails else [])
    if args.ablations is not None:
        jobs += [Job("fp_trained", "FP", seed) for seed in range(seeds)]
        jobs += [Job("qsam2", args.ablation_bits, seed, name) for name in args.ablations or ABLATIONS
                 for seed in range(seeds)]
    for bits in [] if args.ablations is not None else args.bits:
        for method in args.methods:
            if method == "fp":
                continue
            if method == "fp_trained":
                jobs += [Job(method, "FP", seed) for seed in range(seeds)] if bits == args.bits[0] else []
                continue
            n = 1 if method in PTQ or bits not in args.seeded_bits else seeds
            jobs += [Job(method, bits, seed) for seed in range(n)]
    jobs.sort(key=lambda job: job.seed)  # every row's first seed before any second: a run cut short keeps each row
    os.makedirs(args.out, exist_ok=True)
    rows_path = os.path.join(args.out, "rows.jsonl")
    rows = []
    if args.resume and os.path.exists(rows_path):  # a run cut short goes on: the rows it finished are kept
        wanted = {_job_key(asdict(j)) for j in jobs}
        rows = [r for r in read_rows(rows_path, need_float=False) if _job_key(r) in wanted]
        done = {_job_key(r) for r in rows}
        jobs = [j for j in jobs if _job_key(asdict(j)) not in done]
        print(f"{len(rows)} rows kept from {rows_path}", flush=True)
    print(f"{len(jobs)} rows, {jobs_parallel} at a time", flush=True)
    started = time.time()
    partial = open(rows_path, "w")  # rows as they finish, should the run be cut short
    for row in rows:
        partial.write(json.dumps(row) + "\n")
    partial.flush()
    ctx = torch.multiprocessing.get_context("spawn")
    devices = ctx.Queue()
    for i in range(jobs_parallel):
        devices.put(f"cuda:{i % gpus}" if gpus else "cpu")
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs_parallel // (2 if gpus else 1))
    with ProcessPoolExecutor(jobs_parallel, mp_context=ctx, initializer=_init_worker,
                             initargs=(devices, threads)) as pool:
        futures = {pool.submit(run_job, job, setup): job for job in jobs}
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            partial.write(json.dumps(row) + "\n")
            partial.flush()
            print(f"[{time.time() - started:5.0f} s] {row['bits']} {row['label']} seed {row['seed']}: "
                  f"box {row['box_mIoU']:.3f} point {row['point_mIoU']:.3f} J&F {row['J&F']:.3f} "
                  f"real box {row['real_box_mIoU']:.3f}", flush=True)
    partial.close()
    return rows


def _run_arguments(argv: list[str]) -> list[str]:
    """The command line of the run itself: without ``--rows-from FILE``."""
    out, skip = [], False
    for a in argv:
        if a == "--resume":
            continue
        if skip or a.startswith("--rows-from"):
            skip = a == "--rows-from"
            continue
        out.append(a)
    return out


def main() -> None:
    from qsam2_ext.errors import BadFileError
    from qsam2_ext.sam2.heavy_tails import PRESETS as HEAVY_TAIL_PRESETS
    from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, check_checkpoint, default_checkpoint

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reduced", action="store_true", help="the small CPU version")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=[m for m in METHODS if m not in NNCF],
                   help="methods (the NNCF rows need the nncf extra: name them)")
    p.add_argument("--bits", nargs="+", choices=list(BITS), default=list(DEFAULT_BITS))
    p.add_argument("--ablations", nargs="*", choices=list(ABLATIONS), default=None, metavar="ABLATION",
                   help="only the Q-SAM2 ablations at --ablation-bits (these, or with no name all: "
                        + ", ".join(ABLATIONS) + ") and the controls")
    p.add_argument("--ablation-bits", choices=list(BITS), default="W2A4", help="the ablations' bit setting")
    p.add_argument("--seeds", type=int, help="seeds of the QAT rows at --seeded-bits (default 3; reduced 1)")
    p.add_argument("--seeded-bits", nargs="+", choices=list(BITS), default=list(SEEDED),
                   help="bit settings whose QAT rows get every seed (the others one)")
    p.add_argument("--steps", type=int, help="QAT steps (default 300; reduced 10)")
    p.add_argument("--batch-size", type=int, help="QAT images per step (default 32; reduced 4)")
    p.add_argument("--lr", type=float, default=1e-4, help="QAT learning rate of the weights")
    p.add_argument("--quantizer-lr", type=float, default=1e-3, help="QAT learning rate of quantizer parameters")
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--train-style", choices=("synthetic", "photo"), default="synthetic",
                   help="QAT and calibration scenes: v1's synthetic ones, or photo-like (for a model trained on them)")
    p.add_argument("--eval-images", type=int, help="held-out images (default 200; reduced 16)")
    p.add_argument("--eval-clips", type=int, help="held-out clips (default 20; reduced 4)")
    p.add_argument("--calibration-images", type=int, default=16)
    p.add_argument("--no-video", action="store_true", help="skip the J&F evaluation on clips (reported as nan)")
    p.add_argument("--jobs", type=int, help="parallel rows (default: 4 per GPU; CPU 1)")
    p.add_argument("--threads", type=int, help="torch threads per row (default: the cores shared by the rows; "
                                               "pass 1 when other runs share the cores)")
    p.add_argument("--model", default=DEFAULT_MODEL_CONFIG)
    p.add_argument("--checkpoint", default=None,
                   help="float checkpoint of --model every row starts from (default: the embedded default model's)")
    p.add_argument("--heavy-tails", choices=sorted(HEAVY_TAIL_PRESETS),
                   help="apply this function-preserving heavy-tail transform (qsam2_ext.sam2.heavy_tails) to the "
                        "float model of every row; adds the untransformed float row and checks both score the same")
    p.add_argument("--data", default="out/accuracy_data")
    p.add_argument("--out", default="out/accuracy")
    p.add_argument("--rows-from", metavar="ROWS_JSONL",
                   help="no run: the table, JSON and plot from the rows.jsonl of a run cut short (give that run's "
                        "options, which the table states)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in <out>/rows.jsonl (a run cut short, same options) and run the rest")
    args = p.parse_args()
    small = args.reduced
    seeds = args.seeds or (1 if small else 3)
    steps = args.steps or (10 if small else 300)
    batch_size = args.batch_size or (4 if small else 32)
    eval_images = args.eval_images or (16 if small else 200)
    eval_clips = args.eval_clips or (4 if small else 20)
    train_images = 64 if small else args.train_images
    gpus = torch.cuda.device_count() if cuda else 0
    jobs_parallel = args.jobs or (4 * gpus if gpus else 1)
    try:  # a missing, foreign or mismatched file fails here, in one line, before data or workers
        checkpoint = check_checkpoint(args.checkpoint or default_checkpoint(), args.model)
    except BadFileError as e:
        p.error(str(e))

    if args.rows_from:
        try:
            rows, started = read_rows(args.rows_from), None
        except BadFileError as e:
            p.error(str(e))
        device_name = ", ".join(sorted({r.get("device_name") or r.get("device", "unknown device") for r in rows}))
    else:
        started = time.time()
        rows = run_rows(args, checkpoint, seeds, steps, batch_size, eval_images, eval_clips, train_images, gpus,
                        jobs_parallel)
        device_name = torch.cuda.get_device_name(0) + f" x{gpus}" if gpus else f"CPU ({os.cpu_count()} cores)"
    if args.heavy_tails:
        check_float_invariant(rows)
    table = summarize(rows)
    meta = {"model": os.path.basename(args.model),
            "checkpoint": args.checkpoint or "embedded default (qsam2_mini.pt)",
            "device": device_name,
            "torch": torch.__version__, "steps": steps, "batch_size": batch_size, "lr": args.lr,
            "quantizer_lr": args.quantizer_lr, "train_images": train_images, "train_style": args.train_style,
            "eval_images": eval_images, "eval_clips": eval_clips, "video": not args.no_video,
            "calibration_images": args.calibration_images, "seeds": seeds, "heavy_tails": args.heavy_tails,
            "seconds": None if started is None else time.time() - started,
            "command": " ".join(["python", "benchmarks/accuracy.py"] + _run_arguments(sys.argv[1:])),
            "rows_from": args.rows_from}
    write_json(os.path.join(args.out, "accuracy.json"), {"meta": meta, "table": table, "rows": rows})
    text = markdown(table, meta)
    write_text(os.path.join(args.out, "accuracy.md"), text)
    plot(table, os.path.join(args.out, "accuracy.png"))
    print(text)
    print(f"{len(rows)} rows" + ("" if started is None else f" in {meta['seconds']:.0f} s"))


if __name__ == "__main__":
    main()
