"""Edge inference: the SAM2.1 image encoder on CPU cores, float32 eager against packed W8A8 / W4A8 / W2A8.

    python benchmarks/cpu_speed.py                          # sam2.1_hiera_t, 1024², batch 1, this machine's cores
    python benchmarks/cpu_speed.py --model sam2.1_hiera_b+ --size 512

Every Linear and 1x1 Conv2d of the image encoder is quantized one-shot (weights per output channel, inputs
dynamically per token: no calibration needed for speed). Rows with "integer" multiply int8 codes
(``qsam2_ext.integer_matmul``: one int8 GEMM per Linear, fast with AVX512-VNNI or AMX; on AVX2-only CPUs through
oneDNN's u8 x s8 matmul for 2/3/4-bit weights, while 8-bit weights would meet torch's plain-loop int8 GEMM, tens of
times slower: rows without a fast kernel here are skipped unless ``--force-integer``); "reference" rows dequantize
at every call and run the float op; "default" rows run what a quantized model runs by default (eager: per kind of
layer the faster of the weight dequantized once and kept, or per call, measured on the first call:
``qsam2_ext.kernels.cpu_linear``), "measured" rows what it runs inside ``integer_matmul()`` (the same choice with the
integer product among the paths); the tables say which ran, per kind of layer. Packed weights stay packed in
memory (2 bits per weight for W2) except where the CPU path keeps a dequantized copy (or int8 codes). Latency
is the median of ``--repeats`` timed runs after one warm-up, the rows taking turns (one call each per round: the
cores may be shared), in the same process as the float baseline (``--compile`` adds ``torch.compile`` rows:
inductor fuses the quantization and the integer product's epilogue). SQNR against the float encoder shows the rows
compute the same thing. Writes ``<out>/cpu_speed.json`` and ``cpu_speed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Optional

import torch
from torchao.quantization import quantize_

import qsam2_ext
from qsam2_ext.core import fast_int8_product, is_linear_like
from qsam2_ext.core.cpu_int8 import u8s8_cpu
from qsam2_ext.io import write_json, write_text
from qsam2_ext.kernels.cpu_linear import cpu_paths, kinds_taken, paths_taken
from qsam2_ext.sam2.images import PHOTOS, photo_batch
from qsam2_ext.sam2.models import build_model

ROWS = (  # name, weight bits, activation bits, path, torch.compile
    ("fp32 eager", None, None, None, False),
    ("W2A16 default", 2, None, "default", False),
    ("W2A16 reference", 2, None, "reference", False),
    ("W4A8 default", 4, 8, "default", False),
    ("W4A8 reference", 4, 8, "reference", False),
    ("W8A8 default", 8, 8, "default", False),
    ("W8A8 reference", 8, 8, "reference", False),
    ("W8A8 integer", 8, 8, "integer", False),
    ("W4A8 integer", 4, 8, "integer", False),
    ("W4A8 measured", 4, 8, "measured", False),
    ("W2A8 integer", 2, 8, "integer", False),
    ("W2A8 default", 2, 8, "default", False),
    ("W2A8 reference", 2, 8, "reference", False),
    ("fp32 compiled", None, None, None, True),
    ("W8A8 integer compiled", 8, 8, "integer", True),
    ("W2A8 integer compiled", 2, 8, "integer", True),
    ("W2A8 reference compiled", 2, 8, "reference", True),
)


def context(path: Optional[str], force: bool):
    """``"integer"``: inside ``integer_matmul()``, the integer product on every layer that has it; ``"measured"``:
    inside ``integer_matmul()``, per kind of layer the fastest of the integer product and the exact paths (eager);
    ``"reference"``: the weight dequantized at every call;
    ``"default"``: what a quantized model runs by default (eager: per kind of layer the faster of the cached and the
    per-call dequantized weight, measured on its first call; ``qsam2_ext.kernels.cpu_linear``)."""
    if path in ("integer", "measured"):
        stack = contextlib.ExitStack()
        stack.enter_context(qsam2_ext.integer_matmul(force=force))
        if path == "integer":
            stack.enter_context(cpu_paths("integer"))
        return stack
    if path == "reference":
        return cpu_paths("reference")
    return contextlib.nullcontext()


def prepare(encoder, images, path: Optional[str], compile: bool, force: bool):
    """The row's call (in its context) after its first call (which compiles, or measures the default paths), and
    the seconds that first call took."""
    if compile:
        with torch.inference_mode(), context(path, force):
            encoder = torch.compile(encoder)
    started = time.perf_counter()
    with torch.inference_mode(), context(path, force):
        encoder(images)
    first_s = time.perf_counter() - started

    def call():
        with torch.inference_mode(), context(path, force):
            return encoder(images)["vision_features"]

    return call, first_s


def profile_top(call) -> list:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    with profiler(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in events[:8]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sam2.1_hiera_t")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (about a minute each to compile)")
    p.add_argument("--profile", nargs="*", default=[], choices=[r[0] for r in ROWS],
                   help="rows to profile (one more run each): where the time goes, by operator")
    p.add_argument("--rows", nargs="+", default=None, choices=[r[0] for r in ROWS],
                   help="rows to run (default: every row, compiled ones with --compile); the first is the baseline")
    p.add_argument("--force-integer", action="store_true",
                   help="run the integer rows on a CPU without a fast int8 GEMM too (torch's plain loop: very slow)")
    p.add_argument("--out", default="out/cpu_speed")
    args = p.parse_args()
    fast_int8, u8s8 = qsam2_ext.fast_int8_cpu(), u8s8_cpu()
    if not fast_int8 and not args.force_integer:
        print("this CPU has neither AVX512-VNNI nor AMX (torch's int8 GEMM is a plain loop here): integer rows "
              f"{'with 8-bit weights ' if u8s8 else ''}skipped, --force-integer runs them", flush=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    float_encoder = build_model(args.model, image_size=args.size).image_encoder.eval()
    images = photo_batch(PHOTOS[:args.batch], args.size)
    with torch.inference_mode():
        reference = float_encoder(images)["vision_features"]
    selected = [r for r in ROWS if r[0] in args.rows] if args.rows else [r for r in ROWS if not r[4] or args.compile]
    calls, rows = {}, []
    for name, bits, act_bits, path, compile in selected:
        if path in ("integer", "measured") and not fast_int8_product(bits) and not args.force_integer:
            continue
        encoder = float_encoder
        if bits is not None:
            encoder = copy.deepcopy(float_encoder)
            quantize_(encoder, qsam2_ext.qsam2_config(bits=bits, act_bits=act_bits),
                      filter_fn=lambda m, fqn: is_linear_like(m))
        calls[name], first_s = prepare(encoder, images, path, compile, args.force_integer)
        out = calls[name]()
        noise = (out - reference).double().square().sum()
        sqnr = float(10 * torch.log10(reference.double().square().sum() / noise)) if noise > 0 else None
        size = qsam2_ext.storage_report(encoder)
        rows.append({"row": name, "first_call_s": first_s, "compile_s": first_s if compile else 0.0,
                     "quantized_weight_bytes": size["packed_bytes"], "encoder_bytes": size["model_bytes"],
                     "sqnr_db": sqnr, "paths": paths_taken(encoder) if path in ("default", "measured") else {},
                     "path_kinds": kinds_taken(encoder) if path in ("default", "measured") else [],
                     "profile": profile_top(calls[name]) if name in args.profile else []})
        print(f"{name}: ready ({first_s:.1f} s first call)", flush=True)
    # the rows take turns, one call each per round: the cores are shared with other work, whose load drifts
    times: dict = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1e3)
    for r in rows:
        r["ms"] = statistics.median(times[r["row"]])
        r["ms_all"] = times[r["row"]]
    base = rows[0]["ms"]
    for r in rows:
        r["speedup_vs_fp32"] = base / r["ms"]
    cpu = platform.processor() or platform.machine()
    meta = {"model": args.model, "size": args.size, "batch": args.batch, "threads": args.threads,
            "repeats": args.repeats, "cpu": cpu, "cores": os.cpu_count(), "fast_int8_gemm": fast_int8,
            "u8s8_matmul": u8s8, "load_average_1min_at_end": os.getloadavg()[0],
            "torch": torch.__version__,
            "command": shlex.join(["python", "benchmarks/cpu_speed.py"] + sys.argv[1:])}  # row names have spaces
    write_json(os.path.join(args.out, "cpu_speed.json"), {"meta": meta, "rows": rows})
    lines = [f"{args.model} image encoder, {args.size}², batch {args.batch}, {args.threads} threads on {cpu} "
             f"({os.cpu_count()} cores; fast int8 GEMM (AVX512-VNNI or AMX): {'yes' if fast_int8 else 'no'}; "
             f"oneDNN u8 x s8 matmul for <= 7-bit weights: {'yes' if u8s8 else 'no'}), "
             f"torch {torch.__version__}; median of {args.repeats} runs, the rows taking turns (one call each per "
             f"round); load average {meta['load_average_1min_at_end']:.1f} at the end (other processes share the "
             "cores).", "",
             "| row | latency (ms) | speed-up vs fp32 eager | compile (s) | quantized weights (MB) | encoder (MB) | "
             "SQNR vs fp32 (dB) | CPU paths (layers) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sqnr = "—" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        lines.append(f"| {r['row']} | {r['ms']:.0f} | {r['speedup_vs_fp32']:.2f}× | {r['compile_s']:.0f} | "
                     f"{r['quantized_weight_bytes'] / 1e6:.2f} | {r['encoder_bytes'] / 1e6:.2f} | {sqnr} | "
                     + (", ".join(f"{p} {n}" for p, n in r.get("paths", {}).items()) or "—") + " |")
    for r in rows:
        if r["path_kinds"]:
            lines += ["", f"{r['row']}: the path each kind of layer took, and each path's time on its first call "
                      "(ms; the integer product only where it is clearly faster than both exact paths):", "",
                      "| layer | weight | input | layers | path | ms per path |", "|---|---|---|---:|---|---|"]
            lines += [f"| {k['op']} | {'×'.join(map(str, k['weight']))} | {'×'.join(map(str, k['input']))} | "
                      f"{k['layers']} | {k['path']} | " + ", ".join(f"{p} {v:.2f}" for p, v in k["ms"].items()) + " |"
                      for k in r["path_kinds"]]
    for r in rows:
        if r["profile"]:
            lines += ["", f"Where the time goes, {r['row']} (self CPU time of one run, top operators):", "",
                      "| operator | ms | calls |", "|---|---:|---:|"]
            lines += [f"| {e['op']} | {e['ms']:.0f} | {e['calls']} |" for e in r["profile"]]
    text = "\n".join(lines) + "\n"
    write_text(os.path.join(args.out, "cpu_speed.md"), text)
    print(text)


if __name__ == "__main__":
    main()
