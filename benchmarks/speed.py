"""GPU inference speed of quantized SAM2.1: image encoder, SAM2ImagePredictor end to end, video per frame.

    python benchmarks/speed.py --models sam2.1_hiera_t --batches 1 8
    python benchmarks/speed.py --models sam2.1_hiera_l --batches 8 --rows "bf16 compiled" "ours W8A8"

Models come from the sam2 package's configs at 1024², the image encoder in bfloat16 and the rest in float32 under
bf16 autocast, as SAM2's examples run them (weights do not change speed; with a checkpoint pass ``--checkpoint``).
Each row quantizes every Linear of the image encoder (the 1x1 convs of its neck stay bf16 in every row) and, when
marked compiled, wraps the encoder as it is in ``torch.compile`` (default mode, ``dynamic=False``, under
``inference_mode``; ``--skip-module-guards`` adds dynamo's ``skip_guard_on_all_nn_modules_unsafe`` filter to every
compiled row (not with the predictor part), ``--unwrap`` torchao's ``unwrap_tensor_subclass`` to the quantized ones,
``--inductor KEY=VALUE`` inductor config such as ``combo_kernels=True`` or ``triton.cudagraphs=True`` (what
``mode="reduce-overhead"`` sets), ``--integer-matmul`` every row inside ``integer_matmul()`` (rows named "(FP8)" or
"(int8 GEMM)" always are);
each row starts from empty dynamo caches; compile time is the wall time of the first two calls, see
``compile_s``):

* bf16 eager / bf16 compiled: the baselines; every ratio is to "bf16 compiled" of the same model and batch in
  the same run;
* torchao int8 dynamic (``Int8DynamicActivationInt8WeightConfig``) and int4 weight-only
  (``Int4WeightOnlyConfig(group_size=128)``, tinygemm layout; only layers whose inputs 128 divides), compiled and
  eager, both with ``set_inductor_config=False`` so that they compile with the same inductor options as every row;
* torchao float8 rowwise (``Float8DynamicActivationFloat8WeightConfig(PerRow)``, its default fast accumulation):
  the peer FP8 row;
* ours: one-shot ``qsam2_config`` with per-channel grids, packed. Compiled, inductor generates the unpacking
  feeding cuBLAS; eager rows run ``qsam2_ext.kernels`` (Triton; per layer shape the faster of the fused
  GEMM and dequantize-then-cuBLAS, measured on first use). Rows named "(FP8)" (W2A4, W4A4) and "(int8 GEMM)"
  (W8A8, W2A8) are traced inside ``integer_matmul()``: A4 layers multiply their codes exactly on FP8 tensor cores
  (``qsam2_ext.kernels.fp8_linear``, path measured per shape), A8 layers through ``torch._int_mm``; the per-token
  input codes and the weight codes come from one-pass Triton ops (``qsam2_ext.kernels.code_ops``) that inductor
  calls as they are.

The code is split by part around one timing module: ``speed_timing.py`` (events, CUDA graphs, turns),
``speed_rows.py`` (rows, quantization, models), ``speed_encoder.py``, ``speed_predictor.py``, ``speed_video.py``,
``speed_layers.py``, ``speed_profile.py``; this file runs them and writes the tables.

Parts: ``encoder`` (``image_encoder(images)``), ``predictor`` (``set_image``/``set_image_batch`` + a point prompt
per image, all rows' calls timed in turns like ``encoder-graph``'s replays), ``video`` (``SAM2VideoPredictor`` on 16
frames, one point on frame 0; per-frame latency is the median over frames 8..15, once the 7-frame memory bank is
full), ``layers`` (each distinct encoder Linear shape on its own, eager: bf16 cuBLAS, our op's two paths and the
reference dequantize-then-``F.linear``; where the time goes), ``encoder-graph`` (each row's encoder call captured as
a CUDA graph, all rows' graphs then replayed in turns: the GPU's work alone, without the per-call CPU cost that
bounds batch 1 and varies with the host).
Latency is the median of CUDA-event timings of single calls after warm-up (the GPU waits for each call, so a
call's CPU-side launch cost counts, as it does for one request). Results are appended to ``<out>/speed.jsonl`` as
they come (a cut-off run keeps what it measured); ``<out>/speed.json`` and ``speed.md`` gather them.
``--profile ROW...`` adds, for those rows' encoder calls, CPU time against GPU kernel time, GPU time by kind of
kernel (GEMM, activation quantization, attention, weight unpacking, other) and the top operators.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed_encoder import bench_encoder, encoder_call  # noqa: E402
from speed_layers import bench_layers  # noqa: E402
from speed_predictor import predictor_turn  # noqa: E402
from speed_profile import KERNEL_FAMILIES, kernel_family  # noqa: E402,F401  (re-exported)
from speed_rows import BASELINE, ROWS, build, quantize_encoder, row_context, weight_bytes  # noqa: E402,F401
from speed_timing import TURN_ROUNDS, capture_graph, time_in_turns  # noqa: E402
from speed_video import bench_video  # noqa: E402

from qsam2_ext.io import write_json, write_text  # noqa: E402


TIMED_PARTS = ["encoder", "encoder-graph", "predictor", "video"]
PARTS = TIMED_PARTS + ["layers"]


def bench_row(config: str, row: str, args, record) -> dict:
    """Build, quantize and (maybe) compile one row's model, time its encoder (and video) at each batch size, and
    return the calls to be timed in turns with the other rows' (``time_in_turns``): by (part, batch), the encoder
    call captured as a CUDA graph and the predictor's call, each with the row's fields (and what keeps it alive).
    """
    quantization, compiled = ROWS[row]
    end_to_end = row in args.end_to_end_rows
    # every row starts from empty dynamo caches: SAM2's forward code is shared by all model instances, so without
    # this each row's guards are checked after the earlier rows' (CPU time per call) and, past dynamo's recompile
    # limit (8 per code object), later rows silently run eager
    torch._dynamo.reset()
    gc.collect()  # earlier rows' compiled models sit in reference cycles: freed later, they would make peaks negative
    held_by_earlier_rows = torch.cuda.memory_allocated()  # their graphs and predictors, kept for time_in_turns
    try:
        model = build(config, args.checkpoint, video=end_to_end and "video" in args.parts)
        encoder = model.image_encoder.encoder
        quantize_encoder(encoder, quantization)
        linear_bytes, encoder_bytes = weight_bytes(encoder)
        unwrapped = args.unwrap and compiled and quantization is not None
        if unwrapped:  # packed weights become plain tensors, the subclass rebuilt inside the compiled graph
            from torchao.utils import unwrap_tensor_subclass

            unwrap_tensor_subclass(encoder)
        if compiled:
            options = dict(args.inductor)
            if args.skip_module_guards:
                options["guard_filter_fn"] = torch.compiler.skip_guard_on_all_nn_modules_unsafe
            encoder.compile(dynamic=False, options=options or None)
    except Exception as e:  # noqa: BLE001 - a row that cannot be built is reported, not fatal
        record({"model": config, "row": row, "part": "build", "error": f"{type(e).__name__}: {e}"[:500]})
        return {}
    common = {"model": config, "row": row, "linear_weight_bytes": linear_bytes, "encoder_bytes": encoder_bytes}
    if compiled and args.inductor:
        common["inductor_options"] = dict(args.inductor)
    if compiled and args.skip_module_guards:
        common["guard_filters"] = ["module guards skipped"]
    if unwrapped:
        common["unwrapped"] = True
    if args.integer_matmul and compiled and isinstance(quantization, tuple) and quantization[1]:
        common["integer_matmul"] = True
    turns, calls = {}, {}

    def add_turn(part: str, batch: int, make) -> None:
        try:
            turns[part, batch] = make()
        except Exception as e:  # noqa: BLE001
            record({**common, "batch": batch, "part": part, "error": f"{type(e).__name__}: {e}"[:500]})

    for batch in args.batches:
        call = calls[batch] = encoder_call(model, batch)  # timed as is, later captured as a CUDA graph
        parts = {"encoder": lambda: bench_encoder(call, args.repeats, compiled, row in args.profile)}
        if end_to_end and batch == 1:
            parts["video"] = lambda: bench_video(model)
        for part, fn in parts.items():
            if part not in args.parts:
                continue
            try:
                with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
                    result = fn()
            except Exception as e:  # noqa: BLE001
                result = {"error": f"{type(e).__name__}: {e}"[:500]}
            if "peak_bytes" in result:
                result["peak_bytes"] -= held_by_earlier_rows
            record({**common, "batch": batch, "part": part, **result})
        if end_to_end and "predictor" in args.parts:
            add_turn("predictor", batch, lambda: predictor_turn(model, batch, common, held_by_earlier_rows))
    for batch, call in calls.items() if "encoder-graph" in args.parts else ():  # after the peaks: graphs hold memory
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
            add_turn("encoder-graph", batch, lambda: (capture_graph(call).replay, {**common, "batch": batch}, call))
    return turns


def inductor_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` for ``torch._inductor.config``, the value read as a Python literal (else kept as text)."""
    import ast

    from torch._inductor import config

    key, sep, value = text.partition("=")
    if not sep or not hasattr(config, key):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE with KEY in torch._inductor.config")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["sam2.1_hiera_t", "sam2.1_hiera_b+", "sam2.1_hiera_l"])
    p.add_argument("--checkpoint", default=None, help="float checkpoint (one model only)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    p.add_argument("--end-to-end-rows", nargs="+", default=["bf16 eager", "bf16 compiled", "ours W2A16", "ours W2A8"],
                   choices=list(ROWS), help="rows that also run the predictor and video parts")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--profile", nargs="*", default=[], choices=list(ROWS),
                   help="rows whose encoder call is also profiled (CPU vs GPU time, top operators)")
    p.add_argument("--skip-module-guards", action="store_true",
                   help="compile every compiled row, the baseline included, with dynamo's guard filter "
                        "torch.compiler.skip_guard_on_all_nn_modules_unsafe (no per-call checks of parameters)")
    p.add_argument("--unwrap", action="store_true",
                   help="apply torchao's unwrap_tensor_subclass to every quantized compiled row before compiling "
                        "(no per-call subclass unwrapping by AOT autograd; see README, Compiling packed models)")
    p.add_argument("--integer-matmul", action="store_true",
                   help="run every row inside qsam2_ext.integer_matmul(): compiled, our W8A8 / W2A8 layers trace "
                        "the int8 GEMM (torch._int_mm) instead of the dequantize expression")
    p.add_argument("--inductor", nargs="+", default=[], type=inductor_option, metavar="KEY=VALUE",
                   help="inductor config for every compiled row, the baseline included (e.g. combo_kernels=True, or "
                        "triton.cudagraphs=True: mode='reduce-overhead')")
    p.add_argument("--out", default="out/speed")
    p.add_argument("--summarize-only", action="store_true",
                   help="rebuild <out>/speed.json and speed.md from <out>/speed.jsonl (runs merged from several calls)")
    args = p.parse_args()
    if args.summarize_only:
        return summarize(args.out)
    if args.checkpoint and len(args.models) > 1:
        sys.exit("--checkpoint goes with one --models entry")
    if dict(args.inductor).get("triton.cudagraphs") and "encoder-graph" in args.parts:
        sys.exit("--inductor triton.cudagraphs=True replays compiled rows as CUDA graphs already (what "
                 "mode='reduce-overhead' does); the encoder-graph part cannot capture them again: leave it out")
    if args.skip_module_guards and "predictor" in args.parts:
        # in turns, every row's compiled encoder stays alive on SAM2's shared code objects, and without module
        # guards a call hits whichever row's graph matches first (on an H200: KeyError 'parametrizations', the
        # baseline's call running an unwrapped row's graph)
        sys.exit("--skip-module-guards cannot go with the predictor part: its rows, timed in turns, share compiled "
                 "code that only module guards tell apart; leave one out")
    if not torch.cuda.is_available():
        sys.exit("benchmarks/speed.py needs a CUDA GPU")
    os.makedirs(args.out, exist_ok=True)
    jsonl = os.path.join(args.out, "speed.jsonl")
    device = torch.cuda.get_device_name()
    # a process is a run (its baseline is its own); processes started together on several GPUs differ by GPU
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", torch.cuda.current_device())
    run = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} gpu{gpu}"
    command = shlex.join(["python", "benchmarks/speed.py"] + sys.argv[1:])  # row names have spaces

    def record(entry: dict) -> None:
        entry = {**entry, "device": device, "torch": torch.__version__, "run": run, "command": command}
        with open(jsonl, "a") as f:
            f.write(json.dumps(entry) + "\n")
        print(json.dumps(entry), flush=True)

    # compiled rows called again in turns (the predictor) hold dynamo cache entries for every row and batch (one
    # each, two where a first call changes what dynamo guards on; the limit leaves twice that) on SAM2's shared code
    # objects; past the default limit (8) dynamo would run the rest eager, silently
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(args.rows) * len(
        args.batches))
    torch.manual_seed(0)
    for config in args.models:
        if "layers" in args.parts:
            encoder = build(config, args.checkpoint, video=False).image_encoder
            for batch in args.batches:
                for entry in bench_layers(encoder, batch, args.rows):
                    record({"model": config, "batch": batch, "part": "layers", **entry})
            del encoder
        turns = {}
        for row in args.rows:
            # dynamo traces at the row's first calls, and guards on the context (the packed weights' flatten context)
            with row_context(row, args.integer_matmul):
                for (part, batch), turn in bench_row(config, row, args, record).items():
                    turns[part, row, batch] = turn
            torch.cuda.empty_cache()
        for part, repeats in (("encoder-graph", args.repeats), ("predictor", max(5, args.repeats // 4))):
            calls = {key: in_context(key[1], call, args.integer_matmul)
                     for key, (call, _, _) in turns.items() if key[0] == part}
            for key, (ms, frames) in time_in_turns(calls, repeats).items():
                record({**turns[key][1], "part": part, "ms": ms, "frames_compiled_while_timed": frames})
        del turns
        torch.cuda.empty_cache()
    summarize(args.out)


def in_context(row: str, call, integer_matmul: bool):
    """``call`` inside the row's context (``row_context``), as it was traced."""
    def called():
        with row_context(row, integer_matmul):
            return call()

    return called


def row_label(entry: dict) -> str:
    """The row's name, with the inductor options (``--inductor``), guard filters, unwrapping and integer product it
    was compiled with, if any."""
    tags = [f"{k}={v}" for k, v in entry.get("inductor_options", {}).items()] + entry.get("guard_filters", [])
    tags += ["unwrapped"] if entry.get("unwrapped") else []
    tags += ["integer_matmul"] if entry.get("integer_matmul") else []
    return entry["row"] + (f" [{', '.join(tags)}]" if tags else "")


def summarize(out: str) -> None:
    """speed.json and speed.md from every line of speed.jsonl (runs may be split across calls)."""
    with open(os.path.join(out, "speed.jsonl")) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    timed = [e for e in entries if e["part"] in TIMED_PARTS]
    base = {(e["run"], e["model"], e["batch"], e["part"]): e["ms"] for e in timed if e["row"] == BASELINE and "ms" in e}
    float_linear = {e["model"]: e["linear_weight_bytes"] for e in timed if e["row"] == BASELINE}
    for e in timed:
        b = base.get((e["run"], e["model"], e["batch"], e["part"]))
        e["ratio_vs_bf16_compiled"] = e["ms"] / b if b and "ms" in e else None
        f = float_linear.get(e["model"])
        e["linear_weights_smaller"] = f / e["linear_weight_bytes"] if f and e.get("linear_weight_bytes") else None
    meta = {"devices": sorted({e["device"] for e in entries}), "torch": sorted({e.get("torch", "?") for e in entries})}
    write_json(os.path.join(out, "speed.json"), {"meta": meta, "entries": entries})
    lines = [f"Devices: {', '.join(meta['devices'])}; torch {', '.join(meta['torch'])}. Ratios are to "
             f"'{BASELINE}' of the same model, batch and part, measured in the same run (a process: its start time). "
             "Latency in ms (median).", "", "Runs:", ""]
    runs = {e["run"]: (e["device"], e["command"]) for e in entries}
    lines += [f"- {run} ({device}): `{command}`" for run, (device, command) in runs.items()] + [""]
    notes = list(dict.fromkeys(e["note"] for e in entries if e.get("note")))  # caveats added to merged results
    if notes:
        lines += [f"Note [{i + 1}]: {note}." for i, note in enumerate(notes)] + [""]
    for part in TIMED_PARTS:
        rows = [e for e in timed if e["part"] == part]
        if not rows:
            continue
        lines += [f"### {part}", ""]
        if part == "encoder-graph":
            lines += [f"Each row's encoder call replayed as a CUDA graph, the rows in turns ({TURN_ROUNDS} rounds): "
                      "GPU work only, no per-call CPU cost.", ""]
        if part == "predictor":
            lines += [f"Each row's predictor call timed in turns with the other rows' ({TURN_ROUNDS} rounds), except "
                      "rows with a note.", ""]
        lines += ["| run | model | batch | row | latency (ms) | × bf16 compiled | Linear weights (MB) "
                  "| smaller | encoder (MB) | peak (GB) | compile (s) |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for e in rows:
            if "error" in e:
                lines.append(f"| {e['run']} | {e['model']} | {e['batch']} | {row_label(e)} | "
                             f"error: {e['error'][:80]} |||||||")
                continue
            ratio = "—" if e["ratio_vs_bf16_compiled"] is None else f"{e['ratio_vs_bf16_compiled']:.2f}"
            smaller = "—" if e["linear_weights_smaller"] is None else f"{e['linear_weights_smaller']:.2f}×"
            peak = "—" if e.get("peak_bytes") is None else f"{e['peak_bytes'] / 2**30:.2f}"
            comp = "—" if e.get("compile_s") is None else f"{e['compile_s']:.0f}"
            unsteady = f" (dynamo compiled {e['frames_compiled_while_timed']} frames while timed)" if e.get(
                "frames_compiled_while_timed") else ""
            unsteady += f" [{notes.index(e['note']) + 1}]" if e.get("note") else ""
            lines.append(f"| {e['run']} | {e['model']} | {e['batch']} | {row_label(e)} | {e['ms']:.2f}{unsteady} | "
                         f"{ratio} | {e['linear_weight_bytes'] / 1e6:.2f} | {smaller} | "
                         f"{e['encoder_bytes'] / 1e6:.1f} | {peak} | {comp} |")
        lines.append("")
    for e in timed:
        if e.get("profile"):
            prof = e["profile"]
            lines += [f"### profile: {e['model']}, batch {e['batch']}, {row_label(e)} ({e['run']})", "",
                      f"Per call: {prof['cpu_ms_per_call']:.2f} ms of CPU time (Python, dispatch, launches), "
                      f"{prof['gpu_ms_per_call']:.2f} ms of GPU kernels; latency {e['ms']:.2f} ms.", ""]
            if prof.get("kernel_families"):
                lines += ["GPU kernels by kind (ms per call):", "", "| kind | GPU | kernels |", "|---|---:|---:|"]
                lines += [f"| {k} | {v['gpu_ms']:.3f} | {v['count']} |" for k, v in prof["kernel_families"].items()]
                lines.append("")
            for key, title in (("by_gpu", "GPU time"), ("by_cpu", "CPU time")):
                lines += [f"Top operators by {title} (ms per call):", "", "| operator | CPU | GPU | calls |",
                          "|---|---:|---:|---:|"]
                lines += [f"| {r['op']} | {r['cpu_ms']:.3f} | {r['gpu_ms']:.3f} | {r['count']} |" for r in prof[key]]
                lines.append("")
    layers = [e for e in entries if e["part"] == "layers"]
    if layers:
        keys = [k for k in layers[0] if k.endswith("_ms") and k != "bf16_ms"]
        lines += ["### layers (each distinct encoder Linear shape; ms, × bf16 cuBLAS)", "",
                  "| model | batch | M | K | N | count | bf16 | " + " | ".join(k[:-3] for k in keys) + " |",
                  "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(keys)]
        for e in layers:
            cells = [f"{e[k]:.3f} ({e[k] / e['bf16_ms']:.2f})" for k in keys]
            lines.append(f"| {e['model']} | {e['batch']} | {e['M']} | {e['K']} | {e['N']} | {e['count']} | "
                         f"{e['bf16_ms']:.3f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    write_text(os.path.join(out, "speed.md"), text)
    print(text)


if __name__ == "__main__":
    main()
