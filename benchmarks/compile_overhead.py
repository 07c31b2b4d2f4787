"""Per-call cost of packed weights in a compiled model: dynamo's guards and AOT autograd's subclass unwrapping.

    python benchmarks/compile_overhead.py                 # this machine's CPU (or --device cuda)

A stack of small Linear layers (``--layers`` x ``--width``², a few tokens) makes the per-call framework cost
visible, which is what bounds SAM2's compiled encoder at batch 1 on a GPU. Rows: float and W2 packed, compiled as
they are, after torchao's ``unwrap_tensor_subclass`` (the subclass rebuilt inside the graph instead of unwrapped by
AOT autograd on every call), and with ``torch.compiler.skip_guard_on_all_nn_modules_unsafe`` as guard filter (no
per-call checks of module attributes and parameters: safe only while the weights are not replaced after
compiling). A row's latency is the median over ``--rounds`` rounds (which interleave the rows) of the 10th
percentile of ``--repeats`` calls after warm-up (other processes on the machine only add time); every timing starts
from empty dynamo caches; ratios to float compiled. The W2 rows must give identical outputs (checked). Writes
``<out>/compile_overhead.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import os
import platform
import pstats
import statistics
import time

import torch
from torchao.quantization import quantize_
from torchao.utils import unwrap_tensor_subclass

import qsam2_ext
from qsam2_ext.io import write_json, write_text

ROWS = {  # name: (packed W2, unwrap_tensor_subclass, skip module guards)
    "float compiled": (False, False, False),
    "float compiled, module guards skipped": (False, False, True),
    "W2 compiled": (True, False, False),
    "W2 compiled, unwrapped": (True, True, False),
    "W2 compiled, module guards skipped": (True, False, True),
    "W2 compiled, unwrapped, module guards skipped": (True, True, True),
}


def per_call_us(model, x, repeats: int, device: str) -> tuple[float, torch.Tensor]:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(5):  # compiles, then warms up
            out = model(x)
        times = []
        for _ in range(repeats):
            sync()
            started = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - started) * 1e6)
    return statistics.quantiles(times, n=10)[0], out  # the fastest tenth: other tenants of the machine only add time


def profile_split(model, x, calls: int) -> dict:
    """Shares of a compiled model's profiled per-call time: AOT autograd's subclass unwrapping, the compiled graph,
    the rest; and how often ``__tensor_flatten__`` ran per call."""
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            model(x)
        profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, primitive calls, tottime, cumtime, ...)
    total = sum(tottime for _, _, tottime, _, _ in stats.values())

    def cumulative(file_end: str, function: str) -> tuple[float, int]:
        hits = [(v[3], v[1]) for (f, _, name), v in stats.items() if f.endswith(file_end) and name == function]
        return max(hits, default=(0.0, 0))

    unwrap, _ = cumulative("subclass_utils.py", "runtime_unwrap_tensor_subclasses")
    graph, _ = cumulative("output_code.py", "__call__")
    _, flattens = cumulative("packed_tensor.py", "__tensor_flatten__")
    return {"profiled_us_per_call": total / calls * 1e6, "aot_unwrap_share": unwrap / total,
            "graph_share": graph / total, "rest_share": 1 - (unwrap + graph) / total,
            "tensor_flatten_per_call": flattens / calls}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--tokens", type=int, default=4)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--profile", action="store_true", help="add where a call's time goes (float and W2, compiled)")
    p.add_argument("--out", default="out/compile_overhead")
    args = p.parse_args()
    torch.manual_seed(0)
    float_model = torch.nn.Sequential(*[torch.nn.Linear(args.width, args.width) for _ in range(args.layers)])
    float_model = float_model.to(args.device).eval()
    x = torch.randn(args.tokens, args.width, device=args.device)
    timings = {row: [] for row in ROWS}
    results, reference = [], None
    for _ in range(args.rounds):  # rounds interleave the rows, so a slow spell of the machine hits all of them
        for row, (packed, unwrap, skip_guards) in ROWS.items():
            model = copy.deepcopy(float_model)
            if packed:
                quantize_(model, qsam2_ext.qsam2_config(bits=2))
            if unwrap:
                unwrap_tensor_subclass(model)
            options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe} if skip_guards else None
            torch._dynamo.reset()
            us, out = per_call_us(torch.compile(model, dynamic=False, options=options), x, args.repeats, args.device)
            timings[row].append(us)
            if packed:
                reference = out if reference is None else reference
                if float((out - reference).abs().max()) != 0:
                    raise AssertionError(f"{row} computes something else than the first W2 row")
    for row, times in timings.items():
        results.append({"row": row, "us_per_call": statistics.median(times), "us_per_round": times})
    split = {}
    if args.profile:
        for row in ("float compiled", "W2 compiled"):
            model = copy.deepcopy(float_model)
            if ROWS[row][0]:
                quantize_(model, qsam2_ext.qsam2_config(bits=2))
            torch._dynamo.reset()
            split[row] = profile_split(torch.compile(model, dynamic=False), x, args.repeats)
    for r in results:
        r["ratio_vs_float_compiled"] = r["us_per_call"] / results[0]["us_per_call"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    meta = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(), **vars(args)}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "compile_overhead.json"), {"meta": meta, "rows": results, "profile": split})
    lines = [f"{args.layers} Linear layers of {args.width}x{args.width}, {args.tokens} tokens, on {device} "
             f"({meta['threads']} threads), torch {torch.__version__}; per row the median over {args.rounds} rounds "
             f"of the 10th percentile of {args.repeats} calls. Every W2 row's outputs equal the first W2 row's.", "",
             "| row | µs per call | × float compiled | rounds (µs) |", "|---|---:|---:|---|"]
    lines += [f"| {r['row']} | {r['us_per_call']:.0f} | {r['ratio_vs_float_compiled']:.2f} | "
              f"{', '.join(f'{t:.0f}' for t in r['us_per_round'])} |" for r in results]
    if split:
        lines += ["", f"Where a call's time goes (cProfile over {args.repeats} calls; shares of the profiled time):",
                  "", "| row | profiled µs per call | AOT subclass unwrap | compiled graph | rest (guards, wrappers) | "
                  "`__tensor_flatten__` per call |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {row} | {v['profiled_us_per_call']:.0f} | {v['aot_unwrap_share']:.0%} | "
                  f"{v['graph_share']:.0%} | {v['rest_share']:.0%} | {v['tensor_flatten_per_call']:.0f} |"
                  for row, v in split.items()]
    text = "\n".join(lines) + "\n"
    write_text(os.path.join(args.out, "compile_overhead.md"), text)
    print(text)


if __name__ == "__main__":
    main()
