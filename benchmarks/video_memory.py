"""Host memory and per-frame latency of SAM2 video tracking against video length; J&F of the quantized memory bank.

    python benchmarks/video_memory.py memory --frames 100 1000 --rows all       # every row at 100 and 1000 frames
    python benchmarks/video_memory.py memory --frames 10000 --rows stream_int8  # one row at 10 000 frames
    python benchmarks/video_memory.py accuracy                                   # J&F, float vs int8 vs int4 bank
    python benchmarks/video_memory.py state                                      # bytes kept per tracked frame
    python benchmarks/video_memory.py latency                                    # per-frame latency, rows in turn

``memory``: the embedded model (qsam2_mini, 256² input) on the CPU tracks one object (first-frame mask) through a
synthetic video of N frames: a 64-frame clip of ``qsam2_ext.sam2.synthetic`` played back and forth, N JPEG files
(hard links to the 64 rendered ones). Each (row, N) runs in its own process, one thread: peak resident memory of
the process (``ru_maxrss``), its resident memory before the video is opened, the per-frame tracking latency (median
over frames 2..N) and the bytes of tensors in the inference state at the end. Rows:

* ``sam2``: sam2's ``SAM2VideoPredictor`` as is (``init_state(folder)``: every frame loaded, every output kept);
* ``sam2_offload``: the same with ``offload_video_to_cpu=True, offload_state_to_cpu=True`` (on a CPU these move
  nothing: they matter on a GPU, where they move the growth to host memory);
* ``stream_fp`` / ``stream_int8`` / ``stream_int4``: ``QSAM2VideoPredictor`` streaming, float / int8 / int4 bank.

Results are merged into ``<out>/video_memory.json`` (one record per row and N, re-runs replace) and written as
``video_memory.md`` and ``video_memory.png`` (peak memory against frames).

``accuracy``: semi-supervised J&F (``qsam2_ext.evaluate``, first-frame masks, interactive mode) of the embedded
model on the held-out synthetic clips of ``benchmarks/accuracy.py`` (seed 1000, 30 clips of 8 frames) and on
``--long-clips`` longer clips (48 frames, same seed, so the memory window fills and slides), for the float bank and
the ``--configs`` banks (int8 / int4, per-token grids by default; ``int8_channel`` / ``int4_channel``: per-channel).
Written to ``<out>/video_memory_accuracy.{json,md}`` after every row.

``state``: the bytes kept per tracked frame in interactive mode (frame input tensor, memory features, mask logits,
object pointer) by sam2 and by the float, int8 and int4 banks. Written to ``<out>/video_memory_state.{json,md}``.

``latency``: per-frame latency of ``sam2`` and the three streaming rows in one process, taking turns over
``--rounds`` runs of a ``--frames``-frame video, so that all rows share the machine's load alike. Written to
``<out>/video_memory_latency.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROWS = ("sam2", "sam2_offload", "stream_fp", "stream_int8", "stream_int4")
BITS = {"stream_fp": None, "stream_int8": 8, "stream_int4": 4}
BASE_FRAMES, SIZE, SEED = 64, 256, 1000


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_video(root: str, frames: int) -> tuple[str, str]:
    """A folder of ``frames`` JPEGs (hard links to a 64-frame clip played back and forth) and its first mask."""
    import numpy as np
    from PIL import Image

    from qsam2_ext.sam2.synthetic import render_clip

    base = os.path.join(root, "base")
    mask = os.path.join(root, "mask.png")
    if not os.path.isdir(base):
        images, ids = render_clip(SEED, 0, frames=BASE_FRAMES, size=SIZE)
        os.makedirs(base + ".partial", exist_ok=True)
        for t, image in enumerate(images):
            Image.fromarray(image).save(os.path.join(base + ".partial", f"{t:05d}.jpg"), quality=95)
        Image.fromarray((ids[0] == 1).astype(np.uint8)).save(mask)
        os.replace(base + ".partial", base)
    folder = os.path.join(root, f"video_{frames}")
    if not os.path.isdir(folder):
        os.makedirs(folder + ".partial", exist_ok=True)
        period = 2 * (BASE_FRAMES - 1)
        for t in range(frames):
            k = t % period
            source = k if k < BASE_FRAMES else period - k
            os.link(os.path.join(base, f"{source:05d}.jpg"), os.path.join(folder + ".partial", f"{t:05d}.jpg"))
        os.replace(folder + ".partial", folder)
    return folder, mask


def _checkpoint(done: int) -> bool:
    return done in (100, 200, 500) or (done > 0 and done % 1000 == 0)


def worker(row: str, folder: str, mask_path: str, progress: Optional[str] = None) -> dict:
    """One measurement, in this process (meant to be a fresh one). With ``progress``, a JSON line is appended there
    at frames 100, 200, 500 and every 1000 (peak memory so far, state bytes, median latency so far): a run stopped
    early still tells how memory grew."""
    import logging
    import warnings

    import numpy as np
    import torch
    from PIL import Image

    from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, build_model, default_checkpoint
    from qsam2_ext.sam2.video import build_video_predictor, state_bytes

    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    if row.startswith("sam2"):
        predictor = build_model(DEFAULT_MODEL_CONFIG, default_checkpoint(), video=True)
    else:
        predictor = build_video_predictor(DEFAULT_MODEL_CONFIG, default_checkpoint(), memory_bits=BITS[row])
    mask = np.array(Image.open(mask_path)) > 0
    rss_model = _rss()
    started = time.perf_counter()
    with torch.inference_mode():
        if row == "sam2":
            state = predictor.init_state(folder)
        elif row == "sam2_offload":
            state = predictor.init_state(folder, offload_video_to_cpu=True, offload_state_to_cpu=True)
        else:
            state = predictor.init_state(folder, streaming=True)
        open_seconds = time.perf_counter() - started
        predictor.add_new_mask(state, 0, 1, mask)
        latencies, area = [], 0
        tick = time.perf_counter()
        for frame_idx, _, logits in predictor.propagate_in_video(state):
            now = time.perf_counter()
            latencies.append(now - tick)
            area += int((logits > 0).sum())
            if progress and _checkpoint(frame_idx + 1):
                with open(progress, "a") as f:
                    f.write(json.dumps({"row": row, "frames_done": frame_idx + 1, "frames": state["num_frames"],
                                        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                                        "state_bytes": state_bytes(state),
                                        "latency_median_s": statistics.median(latencies[1:] or latencies),
                                        "time": time.time()}) + "\n")
            tick = time.perf_counter()
    frames = state["num_frames"]
    return {"row": row, "frames": frames, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_after_model_bytes": rss_model, "state_bytes": state_bytes(state),
            "latency_median_s": statistics.median(latencies[1:]), "latency_mean_s": statistics.fmean(latencies[1:]),
            "open_s": open_seconds, "track_s": sum(latencies), "mask_pixels": area}


def _merge(path: str, records: list[dict]) -> list[dict]:
    old = []
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)["records"]
    keys = {(r["row"], r["frames"]) for r in records}
    merged = [r for r in old if (r["row"], r["frames"]) not in keys] + records
    return sorted(merged, key=lambda r: (ROWS.index(r["row"]), r["frames"]))


def _table(records: list[dict]) -> str:
    sam2 = {r["frames"]: r for r in records if r["row"] == "sam2"}
    lines = ["| row | frames | peak RSS (MiB) | RSS after model (MiB) | state (MiB) | state / frame (KiB) | "
             "latency median (ms) | latency vs sam2 | peak vs sam2 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        base = sam2.get(r["frames"])
        lat = f"{r['latency_median_s'] / base['latency_median_s']:.2f}x" if base else "-"
        peak = f"{r['peak_rss_bytes'] / base['peak_rss_bytes']:.2f}x" if base else "-"
        lines.append(f"| {r['row']} | {r['frames']} | {r['peak_rss_bytes'] / 2**20:.0f} | "
                     f"{r['rss_after_model_bytes'] / 2**20:.0f} | {r['state_bytes'] / 2**20:.1f} | "
                     f"{r['state_bytes'] / r['frames'] / 1024:.1f} | {1000 * r['latency_median_s']:.0f} | {lat} | "
                     f"{peak} |")
    return "\n".join(lines)


def _progress_records(out: str) -> list[dict]:
    import glob

    records = []
    for path in sorted(glob.glob(os.path.join(out, "video_memory_progress_*.jsonl"))):
        with open(path) as f:
            records += [json.loads(line) for line in f]
    return records


def _plot(records: list[dict], path: str, progress: Optional[list] = None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    from qsam2_ext.io import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in ROWS:
        points = sorted((r["frames"], r["peak_rss_bytes"] / 2**20) for r in records if r["row"] == row)
        if points:
            ax.plot(*zip(*points), marker="o", label=row)
    for frames in sorted({r["frames"] for r in progress or ()}):
        for row in ROWS:
            points = [(r["frames_done"], r["peak_rss_bytes"] / 2**20) for r in progress
                      if r["row"] == row and r["frames"] == frames]
            if points:
                ax.plot(*zip(*points), marker=".", linestyle="--", label=f"{row}, while tracking {frames} frames")
    ax.set_xscale("log")
    ax.set_xlabel("frames")
    ax.set_ylabel("peak resident memory (MiB)")
    ax.set_title("qsam2_mini 256², CPU, one object")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _progress_table(out: str) -> str:
    """The checkpoints of the progress files (``worker(progress=...)``), runs that finished or not."""
    lines = ["| row | video frames | frames done | peak RSS (MiB) | state (MiB) | latency median so far (ms) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in _progress_records(out):
        lines.append(f"| {r['row']} | {r['frames']} | {r['frames_done']} | {r['peak_rss_bytes'] / 2**20:.1f} "
                     f"| {r['state_bytes'] / 2**20:.2f} | {1000 * r['latency_median_s']:.0f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def write_tables(out: str) -> str:
    """``video_memory.md`` and ``.png`` from ``video_memory.json`` and the progress files."""
    from qsam2_ext.io import write_text

    path = os.path.join(out, "video_memory.json")
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            records = json.load(f)["records"]
    text = _table(records) + ("\n\nEach (row, frames) ran in its own process at its own time on a shared, loaded "
                              "2-core machine: compare latencies in video_memory_latency.md (rows taking turns).")
    progress = _progress_table(out)
    if progress:
        text += "\n\nPeak memory while tracking (checkpoints of each run, finished or not):\n\n" + progress
    write_text(os.path.join(out, "video_memory.md"), text + "\n")
    _plot(records, os.path.join(out, "video_memory.png"), _progress_records(out))
    return text


def run_memory(args) -> None:
    from qsam2_ext.io import write_json

    rows = ROWS if args.rows == ["all"] else args.rows
    records = []
    for frames in args.frames:
        folder, mask = make_video(args.data, frames)
        for row in rows:
            command = [sys.executable, os.path.abspath(__file__), "worker", row, folder, mask,
                       os.path.join(args.out, f"video_memory_progress_{row}_{frames}.jsonl")]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{row} at {frames} frames failed:\n{done.stderr[-2000:]}")
            record = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(record), flush=True)
            records.append(record)
    path = os.path.join(args.out, "video_memory.json")
    merged = _merge(path, records)
    write_json(path, {"records": merged, "machine": platform.processor() or platform.machine(),
                      "threads": 1, "note": "CPU only; a shared 2-core machine: latencies are noisy"})
    print(write_tables(args.out))


ACCURACY_CONFIGS = {"fp": (None, "token"), "int8": (8, "token"), "int4": (4, "token"),
                    "int8_channel": (8, "channel"), "int4_channel": (4, "channel")}


def run_accuracy(args) -> None:
    import logging

    import torch

    from qsam2_ext.evaluate import evaluate
    from qsam2_ext.io import write_json, write_text
    from qsam2_ext.sam2.data import open_dataset
    from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, default_checkpoint
    from qsam2_ext.sam2.synthetic import write_split, write_video_split
    from qsam2_ext.sam2.video import build_video_predictor

    torch.set_num_threads(args.threads)
    logging.getLogger().setLevel(logging.WARNING)
    sets = {"clips_8": write_split("clips", os.path.join(args.data, "clips_30"), 30, SEED)}
    if args.long_clips:
        long_root = os.path.join(args.data, f"clips_long_48x{args.long_clips}")
        if not os.path.isdir(long_root):
            write_video_split(long_root + ".partial", args.long_clips, SEED, frames=48)
            os.replace(long_root + ".partial", long_root)
        sets["clips_48"] = long_root
    results = {}
    for set_name, root in sets.items():
        for label in args.configs:
            bits, granularity = ACCURACY_CONFIGS[label]
            started = time.perf_counter()
            model = build_video_predictor(DEFAULT_MODEL_CONFIG, default_checkpoint(), memory_bits=bits,
                                          memory_granularity=granularity)
            out = evaluate(model, open_dataset("video", root), progress=False)
            results[f"{set_name} | {label}"] = {**out["results"], "seconds": time.perf_counter() - started}
            print(set_name, label, {k: out["results"][k] for k in ("J&F", "J", "F", "objects")}, flush=True)
            _write_accuracy(args, results, write_json, write_text)  # after every row: a stopped run keeps its rows


def _write_accuracy(args, results, write_json, write_text) -> None:
    lines = ["| clips | memory bank | J&F | J | F | ΔJ&F vs fp (points) | objects | sequences |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        set_name, label = key.split(" | ")
        fp = results.get(f"{set_name} | fp")
        delta = f"{100 * (r['J&F'] - fp['J&F']):+.2f}" if fp else "-"
        lines.append(f"| {set_name} | {label} | {100 * r['J&F']:.2f} | {100 * r['J']:.2f} | {100 * r['F']:.2f} | "
                     f"{delta} | {r['objects']} | {r['sequences']} |")
    write_json(os.path.join(args.out, "video_memory_accuracy.json"),
               {"results": results, "model": "qsam2_mini", "seed": SEED, "threads": args.threads,
                "command": "python benchmarks/video_memory.py accuracy " + " ".join(sys.argv[2:])})
    write_text(os.path.join(args.out, "video_memory_accuracy.md"), "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def run_state(args) -> None:
    """Bytes kept per tracked frame in interactive mode: the frame's input tensor and its stored output (memory
    features, mask logits, object pointer; the memory position encoding is one shared constant)."""
    import logging
    import warnings

    import numpy as np
    import torch
    from PIL import Image

    from qsam2_ext.io import write_json, write_text
    from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, build_model, default_checkpoint
    from qsam2_ext.sam2.video import build_video_predictor, state_bytes

    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    folder, mask_path = make_video(args.data, 100)
    mask = np.array(Image.open(mask_path)) > 0
    rows = [("sam2", None, "token"), ("ours fp", None, "token"), ("ours int8 token", 8, "token"),
            ("ours int8 channel", 8, "channel"), ("ours int4 token", 4, "token"), ("ours int4 channel", 4, "channel")]
    results = {}
    for label, bits, granularity in rows:
        if label == "sam2":
            predictor = build_model(DEFAULT_MODEL_CONFIG, default_checkpoint(), video=True)
        else:
            predictor = build_video_predictor(DEFAULT_MODEL_CONFIG, default_checkpoint(), memory_bits=bits,
                                              memory_granularity=granularity)
        with torch.inference_mode():
            state = predictor.init_state(folder)
            predictor.add_new_mask(state, 0, 1, mask)
            for _ in predictor.propagate_in_video(state, max_frame_num_to_track=12):
                pass
        out = state["output_dict_per_obj"][0]["non_cond_frame_outputs"][10]
        stored = getattr(out, "stored", out.__getitem__)
        parts = {k: state_bytes(stored(k)) for k in ("maskmem_features", "pred_masks", "obj_ptr",
                                                     "object_score_logits")}
        images = state["images"]
        frame = images.untyped_storage().nbytes() // len(images) if isinstance(images, torch.Tensor) else 0
        results[label] = {"frame_input_bytes": frame, **{f"{k}_bytes": v for k, v in parts.items()},
                          "entry_bytes": sum(parts.values()), "total_bytes": frame + sum(parts.values())}
    sam2 = results["sam2"]
    lines = ["| memory bank | frame input | memory features | mask logits | pointer + score | entry | per frame "
             "| entry vs sam2 | per frame vs sam2 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['frame_input_bytes']} | {r['maskmem_features_bytes']} | "
                     f"{r['pred_masks_bytes']} | {r['obj_ptr_bytes'] + r['object_score_logits_bytes']} | "
                     f"{r['entry_bytes']} | {r['total_bytes']} | "
                     f"{sam2['entry_bytes'] / r['entry_bytes']:.2f}x smaller | "
                     f"{sam2['total_bytes'] / r['total_bytes']:.1f}x smaller |")
    write_json(os.path.join(args.out, "video_memory_state.json"), {"results": results, "model": "qsam2_mini",
                                                                     "bytes": "per tracked frame and object"})
    write_text(os.path.join(args.out, "video_memory_state.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def run_latency(args) -> None:
    """Per-frame latency of sam2 and of the streaming banks in one process, taking turns (``--rounds`` rounds of
    ``--frames`` frames each): on a shared machine every row sees the same mix of load."""
    import logging
    import warnings

    import numpy as np
    import torch
    from PIL import Image

    from qsam2_ext.io import write_json, write_text
    from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, build_model, default_checkpoint
    from qsam2_ext.sam2.video import build_video_predictor

    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    folder, mask_path = make_video(args.data, args.frames)
    mask = np.array(Image.open(mask_path)) > 0
    predictors = {"sam2": build_model(DEFAULT_MODEL_CONFIG, default_checkpoint(), video=True)}
    for row, bits in BITS.items():
        predictors[row] = build_video_predictor(DEFAULT_MODEL_CONFIG, default_checkpoint(), memory_bits=bits)
    latencies = {row: [] for row in predictors}
    for _ in range(args.rounds):
        for row, predictor in predictors.items():
            with torch.inference_mode():
                state = predictor.init_state(folder, **({} if row == "sam2" else {"streaming": True}))
                predictor.add_new_mask(state, 0, 1, mask)
                tick = time.perf_counter()
                for i, _ in enumerate(predictor.propagate_in_video(state)):
                    now = time.perf_counter()
                    if i:  # frame 0 is the prompt's output
                        latencies[row].append(now - tick)
                    tick = now
    results = {row: {"median_s": statistics.median(v), "mean_s": statistics.fmean(v), "frames": len(v)}
               for row, v in latencies.items()}
    base = results["sam2"]["median_s"]
    lines = ["| row | frames timed | latency median (ms) | mean (ms) | median vs sam2 |", "|---|---:|---:|---:|---:|"]
    for row, r in results.items():
        lines.append(f"| {row} | {r['frames']} | {1000 * r['median_s']:.1f} | {1000 * r['mean_s']:.1f} | "
                     f"{r['median_s'] / base:.3f}x |")
    write_json(os.path.join(args.out, "video_memory_latency.json"),
               {"results": results, "video_frames": args.frames, "rounds": args.rounds, "threads": 1,
                "note": "one process, rows taking turns; CPU, shared loaded 2-core machine"})
    write_text(os.path.join(args.out, "video_memory_latency.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "worker":
        print(json.dumps(worker(*sys.argv[2:6])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("memory")
    p.add_argument("--frames", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--rows", nargs="+", default=["all"], choices=["all", *ROWS])
    p = sub.add_parser("accuracy")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--configs", nargs="+", default=["fp", "int8", "int4"], choices=sorted(ACCURACY_CONFIGS))
    p.add_argument("--long-clips", type=int, default=5, help="clips of 48 frames (0: none)")
    sub.add_parser("state")
    p = sub.add_parser("latency")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    sub.add_parser("tables", help="write video_memory.md and .png again from the JSON and progress files")
    for p in sub.choices.values():
        p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "qsam2_video_memory"))
        p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    if args.what == "tables":
        print(write_tables(args.out))
        return
    {"memory": run_memory, "accuracy": run_accuracy, "state": run_state, "latency": run_latency}[args.what](args)


if __name__ == "__main__":
    main()
