"""Edge inference: the SAM2.1 image encoder on CPU cores, float32 eager against packed W8A8 / W4A8 / W2A8.

    python benchmarks/cpu_speed.py                          # sam2.1_hiera_t, 1024², batch 1, this machine's cores
    python benchmarks/cpu_speed.py --model sam2.1_hiera_b+ --size 512

Every Linear and 1x1 Conv2d of the image encoder is quantized one-shot (weights per output channel, inputs
dynamically per token: no calibration needed for speed). Rows with "integer" multiply int8 codes
(``qsam2_ext.integer_matmul``: one int8 GEMM per Linear, fast with AVX512-VNNI or AMX; on AVX2-only CPUs through
oneDNN's u8 x s8 matmul for 2/3/4-bit weights, while 8-bit weights would meet torch's plain-loop int8 GEMM, tens of
times slower: rows without a fast kernel here are skipped unless ``--force-integer``); "reference"
rows dequantize and run the float op. Weights stay packed in memory (2 bits per weight for W2). Latency is the median
of ``--repeats`` timed runs after one warm-up, in the same process as the float baseline (``--compile`` adds
``torch.compile`` rows: inductor fuses the quantization and the integer product's epilogue). SQNR against the float
encoder shows the rows compute the same thing. Writes ``<out>/cpu_speed.json`` and ``cpu_speed.md``.
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

import torch
from torchao.quantization import quantize_

import qsam2_ext
from qsam2_ext.core import fast_int8_product, is_linear_like
from qsam2_ext.core.cpu_int8 import u8s8_cpu
from qsam2_ext.io import write_json, write_text
from qsam2_ext.sam2.images import PHOTOS, photo_batch
from qsam2_ext.sam2.models import build_model

ROWS = (  # name, weight bits, integer product, torch.compile
    ("fp32 eager", None, False, False),
    ("W8A8 reference", 8, False, False),
    ("W8A8 integer", 8, True, False),
    ("W4A8 integer", 4, True, False),
    ("W2A8 integer", 2, True, False),
    ("W2A8 reference", 2, False, False),
    ("fp32 compiled", None, False, True),
    ("W8A8 integer compiled", 8, True, True),
    ("W2A8 integer compiled", 2, True, True),
    ("W2A8 reference compiled", 2, False, True),
)


def run(encoder, images, repeats: int, integer: bool, compile: bool,
        profile: bool = False, force: bool = False) -> tuple[float, float, torch.Tensor, list]:
    """(median latency in ms, compile seconds, output, the top operators of one more run when ``profile``)."""
    context = qsam2_ext.integer_matmul(force=force) if integer else contextlib.nullcontext()
    times, compile_s = [], 0.0
    with torch.inference_mode(), context:
        if compile:
            started = time.perf_counter()
            encoder = torch.compile(encoder)
            encoder(images)  # compiles
            compile_s = time.perf_counter() - started
        for i in range(repeats + 1):
            started = time.perf_counter()
            out = encoder(images)["vision_features"]
            if i:  # the first run warms up
                times.append((time.perf_counter() - started) * 1e3)
        top = []
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as profiler

            with profiler(activities=[ProfilerActivity.CPU]) as prof:
                encoder(images)
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            top = [{"op": e.key, "ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in events[:8]]
    return statistics.median(times), compile_s, out, top


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
    rows = []
    for name, bits, integer, compile in ROWS:
        if (compile and not args.compile) or (integer and not fast_int8_product(bits) and not args.force_integer):
            continue
        encoder = float_encoder
        if bits is not None:
            encoder = copy.deepcopy(float_encoder)
            quantize_(encoder, qsam2_ext.qsam2_config(bits=bits, act_bits=8), filter_fn=lambda m, fqn: is_linear_like(m))
        ms, compile_s, out, top = run(encoder, images, args.repeats, integer, compile, name in args.profile,
                                      force=args.force_integer)
        noise = (out - reference).double().square().sum()
        sqnr = float(10 * torch.log10(reference.double().square().sum() / noise)) if noise > 0 else None
        size = qsam2_ext.storage_report(encoder)
        rows.append({"row": name, "ms": ms, "compile_s": compile_s, "quantized_weight_bytes": size["packed_bytes"],
                     "encoder_bytes": size["model_bytes"], "sqnr_db": sqnr, "profile": top})
        print(f"{name}: {ms:.0f} ms", flush=True)
    base = rows[0]["ms"]
    for r in rows:
        r["speedup_vs_fp32"] = base / r["ms"]
    cpu = platform.processor() or platform.machine()
    meta = {"model": args.model, "size": args.size, "batch": args.batch, "threads": args.threads,
            "repeats": args.repeats, "cpu": cpu, "cores": os.cpu_count(), "fast_int8_gemm": fast_int8,
            "u8s8_matmul": u8s8,
            "torch": torch.__version__,
            "command": shlex.join(["python", "benchmarks/cpu_speed.py"] + sys.argv[1:])}  # row names have spaces
    write_json(os.path.join(args.out, "cpu_speed.json"), {"meta": meta, "rows": rows})
    lines = [f"{args.model} image encoder, {args.size}², batch {args.batch}, {args.threads} threads on {cpu} "
             f"({os.cpu_count()} cores; fast int8 GEMM (AVX512-VNNI or AMX): {'yes' if fast_int8 else 'no'}; "
             f"oneDNN u8 x s8 matmul for <= 7-bit weights: {'yes' if u8s8 else 'no'}), "
             f"torch {torch.__version__}; median of {args.repeats} runs.", "",
             "| row | latency (ms) | speed-up vs fp32 eager | compile (s) | quantized weights (MB) | encoder (MB) | "
             "SQNR vs fp32 (dB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sqnr = "—" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        lines.append(f"| {r['row']} | {r['ms']:.0f} | {r['speedup_vs_fp32']:.2f}× | {r['compile_s']:.0f} | "
                     f"{r['quantized_weight_bytes'] / 1e6:.2f} | {r['encoder_bytes'] / 1e6:.2f} | {sqnr} |")
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
