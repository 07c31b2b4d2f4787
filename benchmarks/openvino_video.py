"""SAM2VideoPredictor per frame: torch against the same predictor with ``openvino_sam2``'s five IRs, in one process.

    python benchmarks/openvino_video.py                  # embedded model (qsam2_mini), one synthetic 16-frame clip

Rows: the torch video predictor (fp32, CPU); the OpenVINO video predictor (image encoder, prompt encoder, mask
decoder, memory encoder and memory attention IRs; fp32 IRs) under the CPU plugin's defaults (bf16 float execution
on a CPU with AMX/AVX512-BF16) and with ``INFERENCE_PRECISION_HINT=f32``; the same with a Q-SAM2 W4A8 image
encoder IR (VRC + LSC's initial clips from the calibration images, no QAT; ``offset="fold"``; the other IRs float);
and with Q-SAM2 W4A8 memory attention and memory encoder IRs as well (``quantize_memory``: the recipe's memory
layers at its weight bits, 8-bit inputs, calibrated on the memory calls of the torch predictor tracking
``--memory-clips`` other synthetic clips; no QAT).
Every predictor tracks every object of the clip from its first-frame box. Latency: each ``propagate_in_video`` step
(one frame: image encoder, memory attention, mask decoder, memory encoder, SAM2's torch glue), frames 1..N-1;
``--repeats`` passes, in each pass every row tracks the whole clip in turn (rows rotated between passes); the
median over all timed frames. Rows are not interleaved frame by frame: in one process, switching between torch
and OpenVINO on every frame made the torch row 7× slower on 2 cores (2.4 s against 0.35 s per frame alone; most
likely OpenVINO's and torch's worker threads competing after each switch; not investigated further). Masks: IoU
of each row's masks with the torch predictor's and with the clip's ground truth, averaged over objects and frames
1..N-1. IR size: the five IRs' files (.xml + .bin), and the two memory IRs'. With memory rows, also the memory
modules alone: each row's memory attention and memory encoder timed on recorded calls (``--module-rounds``).
Writes ``<out>/openvino_video.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import openvino  # noqa: F401  (the extra this benchmark needs: fail here, not halfway)
import torch

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")  # NNCF builds its CPU extension on first use

from qsam2_ext.io import write_json, write_text  # noqa: E402

ROWS = ("torch fp32", "OpenVINO fp32 IRs", "OpenVINO fp32 IRs, f32 hint", "OpenVINO Q-SAM2 W4A8 encoder",
        "OpenVINO Q-SAM2 W4A8 encoder, f32 hint", "OpenVINO Q-SAM2 W4A8 encoder + W4A8 memory",
        "OpenVINO Q-SAM2 W4A8 encoder + W4A8 memory, f32 hint")
IRS = ("image_encoder", "prompt_encoder", "mask_decoder", "memory_encoder", "memory_attention")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _size(folder: str, names) -> int:
    return sum(os.path.getsize(os.path.join(folder, f"{n}.{ext}")) for n in names for ext in ("xml", "bin"))


def _track(predictor, frames_dir: str, boxes: dict) -> None:
    state = predictor.init_state(video_path=frames_dir)
    for obj, box in boxes.items():
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=obj, box=box)
    for _ in predictor.propagate_in_video(state):
        pass


def predictors(args, checkpoint, calibration, memory_clips, work) -> tuple[dict, dict, dict]:
    """The predictors of ``args.rows``, per OpenVINO row its IR sizes in bytes, and the recorded memory calls."""
    from qsam2_ext.integrations.nncf import (finish_nncf_qat, openvino_sam2, prepare_nncf_qat, quantize_memory,
                                             record_memory_inputs)
    from qsam2_ext.sam2.video import build_video_predictor

    reference = build_video_predictor(args.model, checkpoint).eval()
    quantized = both = None
    found, sizes, memory_calls = {}, {}, {}
    for row in args.rows:
        f32 = {"INFERENCE_PRECISION_HINT": "f32"} if row.endswith("f32 hint") else {}
        folder = os.path.join(work, row.replace(",", "").replace(" ", "_").replace("+", "and"))
        if row == "torch fp32":
            found[row] = reference
            continue
        if "W4A8" in row and quantized is None:
            quantized = prepare_nncf_qat(copy.deepcopy(reference), calibration, 4, 8, method="qsam2")
            finish_nncf_qat(quantized)
        if "memory" in row and both is None:
            with torch.inference_mode():
                memory_calls = record_memory_inputs(reference,
                                                    lambda: [_track(reference, *clip) for clip in memory_clips])
            print(f"memory calibration: {len(memory_calls['memory_attention'])} memory attention and "
                  f"{len(memory_calls['memory_encoder'])} memory encoder calls", flush=True)
            both = quantize_memory(quantized, args.memory_recipe, memory_calls, act_bits=8)
        model = both if "memory" in row else quantized if "W4A8" in row else reference
        found[row] = openvino_sam2(copy.deepcopy(model), folder, compress_to_fp16=False, config=f32)
        sizes[row] = {"all": _size(folder, IRS), "memory": _size(folder, IRS[3:])}
    return found, sizes, memory_calls


def _call_memory(model, name: str, item: tuple) -> None:
    """One call of ``model``'s memory attention / encoder as SAM2 makes it, on a recorded ``*IO`` input."""
    if name == "memory_attention":
        model.memory_attention([item[0]], torch.cat([item[2], item[4]]), [item[1]], torch.cat([item[3], item[5]]),
                               num_obj_ptr_tokens=item[4].shape[0])
    else:
        model.memory_encoder(*item, skip_mask_sigmoid=True)


def module_latency(rows: dict, calls: dict, rounds: int) -> dict:
    """Median ms per call of each row's memory attention and memory encoder on recorded calls, rows interleaved in
    every round."""
    times = {row: {name: [] for name in calls} for row in rows}
    for _ in range(rounds):
        for row, model in rows.items():
            for name, items in calls.items():
                for item in items:
                    started = time.perf_counter()
                    _call_memory(model, name, item)
                    times[row][name].append(1000 * (time.perf_counter() - started))
    return {row: {f"{name}_ms": statistics.median(t) for name, t in by.items()} for row, by in times.items()}


def run(rows: dict, frames_dir: str, boxes: dict, truth: list, repeats: int) -> dict:
    """Per pass, each row tracks the whole clip in turn (rows rotated between passes); per row its per-frame
    latencies and the masks of its last pass."""
    states = {row: p.init_state(video_path=frames_dir) for row, p in rows.items()}
    results = {row: {"latency_ms": []} for row in rows}
    masks = {row: {} for row in rows}
    names = list(rows)
    for r in range(repeats):
        for row in names[r % len(names):] + names[:r % len(names)]:
            p = rows[row]
            p.reset_state(states[row])
            for obj, box in boxes.items():
                p.add_new_points_or_box(states[row], frame_idx=0, obj_id=obj, box=box)
            steps = p.propagate_in_video(states[row])
            for t in range(len(truth)):
                started = time.perf_counter()
                frame, ids, logits = next(steps)
                elapsed = 1000 * (time.perf_counter() - started)
                assert frame == t
                if t:
                    results[row]["latency_ms"].append(elapsed)
                masks[row][t] = {obj: (logits[i, 0] > 0).numpy() for i, obj in enumerate(ids)}
    for row in rows:
        lat = results[row]["latency_ms"]
        results[row]["median_ms"] = statistics.median(lat)
        results[row]["iou_vs_torch"] = statistics.mean(
            _iou(masks[row][t][o], masks["torch fp32"][t][o]) for t in range(1, len(truth)) for o in boxes)
        results[row]["iou_vs_truth"] = statistics.mean(
            _iou(masks[row][t][o], truth[t] == o) for t in range(1, len(truth)) for o in boxes)
    return results


def _float_row(row: str) -> str:
    return "OpenVINO fp32 IRs, f32 hint" if row.endswith("f32 hint") else "OpenVINO fp32 IRs"


def markdown(results: dict, meta: dict) -> str:
    base = results["torch fp32"]["median_ms"]
    lines = [f"SAM2VideoPredictor, {meta['model']} at {meta['size']}², one synthetic clip of {meta['frames']} frames "
             f"with {meta['objects']} objects (boxes on frame 0), {meta['cpu']} ({meta['cores']} cores, shared with "
             f"other jobs: latencies are noisy; load average {meta['load_average'][0]:.1f} before tracking, "
             f"{meta['load_average'][1]:.1f} after), OpenVINO {meta['openvino']}, torch {meta['torch']}. Median "
             f"per-frame latency over frames 1..{meta['frames'] - 1} of {meta['repeats']} passes (rows in turn).", "",
             "| row | ms / frame | × torch | × fp32 IRs | mask IoU vs torch | mask IoU vs ground truth | IRs MB | "
             "memory IRs MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row, r in results.items():
        fp = results.get(_float_row(row)) if row != "torch fp32" else None
        ratio = f"{r['median_ms'] / fp['median_ms']:.2f}" if fp else "—"
        size = r.get("ir_bytes")
        mb = f"{size['all'] / 1e6:.2f} | {size['memory'] / 1e6:.2f}" if size else "— | —"
        lines.append(f"| {row} | {r['median_ms']:.1f} | {r['median_ms'] / base:.2f} | {ratio} | "
                     f"{r['iou_vs_torch']:.4f} | {r['iou_vs_truth']:.3f} | {mb} |")
    if any("memory_attention_ms" in r for r in results.values()):
        lines += ["", f"Memory modules alone: median ms per call over {meta['module_rounds']} interleaved rounds of "
                  "the first 1/--memory-clips of the recorded calibration calls (about one clip: memory attention "
                  "with 1 to 7 memory frames; memory encoder), on the predictors of the rows above.",
                  "", "| row | memory attention ms | × fp32 IRs | memory encoder ms | × fp32 IRs |",
                  "|---|---:|---:|---:|---:|"]
        for row, r in results.items():
            if "memory_attention_ms" not in r:
                continue
            fp = results.get(_float_row(row)) if row != "torch fp32" else None
            cells = []
            for name in ("memory_attention", "memory_encoder"):
                ms = r[f"{name}_ms"]
                cells.append(f"{ms:.2f} | {ms / fp[f'{name}_ms']:.2f}" if fp else f"{ms:.2f} | —")
            lines.append(f"| {row} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _clip(root: str, index: int, frames: int) -> tuple:
    """A written clip's frame folder, ground-truth id maps and first-frame boxes ``{object id: xyxy}``."""
    from PIL import Image

    name = f"clip_{index:05d}"
    truth = [np.array(Image.open(os.path.join(root, "Annotations", name, f"{t:05d}.png"))) for t in range(frames)]
    boxes = {}
    for obj in sorted(set(np.unique(truth[0])) - {0}):
        ys, xs = np.nonzero(truth[0] == obj)
        boxes[int(obj)] = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    return os.path.join(root, "JPEGImages", name), truth, boxes


def main() -> None:
    import openvino as ov

    from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, default_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL_CONFIG)
    p.add_argument("--checkpoint", default=None, help="default: the embedded model's")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calibration-images", type=int, default=8)
    p.add_argument("--memory-clips", type=int, default=2, help="synthetic clips the torch predictor tracks to "
                   "calibrate the quantized memory modules (not the timed clip)")
    p.add_argument("--memory-recipe", default="qsam2_mini_w4a8", help="recipe of the quantized memory layers")
    p.add_argument("--module-rounds", type=int, default=10, help="rounds of the memory modules' own timing (0: none)")
    p.add_argument("--data", default="out/accuracy_data")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if "torch fp32" not in args.rows:
        args.rows.insert(0, "torch fp32")
    checkpoint = args.checkpoint or (default_checkpoint() if args.model == DEFAULT_MODEL_CONFIG else None)
    torch.manual_seed(0)

    from accuracy import HELD_OUT_SEED, TRAIN_SEED, _calibration_batches

    from qsam2_ext.sam2.data import open_dataset
    from qsam2_ext.sam2.models import build_model
    from qsam2_ext.sam2.synthetic import write_split, write_video_split

    started = time.time()
    train = write_split("images", os.path.join(args.data, "train_64"), 64, TRAIN_SEED)
    with tempfile.TemporaryDirectory() as work:
        build_size = build_model(args.model, checkpoint).image_size
        batches = _calibration_batches(open_dataset("sa1b", train), args.calibration_images, build_size, "cpu")
        calibration = [b[i:i + 1] for b in batches for i in range(len(b))]
        clip = write_video_split(os.path.join(work, "clip"), 1, HELD_OUT_SEED, frames=args.frames, size=build_size)
        frames_dir, truth, boxes = _clip(clip, 0, args.frames)
        memory_root = write_video_split(os.path.join(work, "memory_clips"), args.memory_clips, TRAIN_SEED,
                                        frames=8, size=build_size)
        memory_clips = [(frames, boxes) for frames, _, boxes in
                        (_clip(memory_root, i, 8) for i in range(args.memory_clips))]
        rows, sizes, memory_calls = predictors(args, checkpoint, calibration, memory_clips, work)
        print(f"tracking {len(boxes)} objects over {args.frames} frames, {len(rows)} rows", flush=True)
        load = [os.getloadavg()[0]]
        with torch.inference_mode():
            results = run(rows, frames_dir, boxes, truth, args.repeats)
        for row, size in sizes.items():
            results[row]["ir_bytes"] = size
        if memory_calls and args.module_rounds:
            one_clip = {name: items[:len(items) // args.memory_clips] for name, items in memory_calls.items()}
            with torch.inference_mode():
                for row, r in module_latency(rows, one_clip, args.module_rounds).items():
                    results[row].update(r)
        load.append(os.getloadavg()[0])
    meta = {"model": os.path.basename(args.model).removesuffix(".yaml"), "size": build_size,
            "frames": args.frames, "objects": len(boxes), "repeats": args.repeats,
            "module_rounds": args.module_rounds if memory_calls else 0, "openvino": ov.__version__,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_average": load,
            "seconds": round(time.time() - started),
            "command": shlex.join(["python", "benchmarks/openvino_video.py"] + sys.argv[1:])}
    try:
        meta["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    write_json(os.path.join(args.out, "openvino_video.json"), {"meta": meta, "rows": results})
    text = markdown(results, meta)
    write_text(os.path.join(args.out, "openvino_video.md"), text)
    print(text)


if __name__ == "__main__":
    main()
