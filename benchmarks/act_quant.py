"""GPU cost of dynamic per-token activation quantization fused into its producer, kernel by kernel.

    python benchmarks/act_quant.py                       # hiera_l's MLP hidden shapes at batch 8, on CUDA
    python benchmarks/act_quant.py --shapes 32768x2304 --dump-code out/code

In a compiled W8A8 / W2A8 / W4A8 encoder every MLP's second Linear quantizes its input (the GELU output) per
token: inductor fuses GELU, the row min/max and the quantize-dequantize into one reduction kernel. On an H200, with
each row's min and max taken in one reduction, those kernels took 0.51 ms each on hiera_l's stage-3 shape against
0.11 ms for the bf16 model's plain GELU (``speed.md``, profile of hiera_l bs8 W8A8): most of the W8A8 overhead.
This benchmark times that kernel against the plain GELU, with inductor settings that change how it builds the
reduction, against what ``qsam2_ext.core.grid.row_extrema`` now traces (min and max over chunks of at most 1024
channels first), and against our Triton row quantizer (``qsam2_ext.kernels``) after a compiled GELU; then the integer
path's input (int8 codes, grids, code sums): as ATen ops that inductor fuses with the GELU (what a compiled layer
inside ``integer_matmul()`` traced before), and the compiled GELU followed by ``qsam2::quantize_tokens`` (one Triton
pass, ``qsam2_ext.kernels.code_ops``: what it traces now). Each row is compiled anew (``dynamic=False``) and timed
with ``triton.testing.do_bench``; ``mismatch`` is the fraction of outputs (codes) that differ from the first
quantize-dequantize (codes) row's (inductor keeps the GELU in float32 inside a fused kernel, while a separate GELU
kernel rounds it to bf16 first, hence the Triton rows'). Writes ``<out>/act_quant.json`` and ``act_quant.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time

import torch
from torch._inductor.choices import InductorChoices
from torch._inductor.virtualized import V
from torch.nn import functional as F

from qsam2_ext import kernels
from qsam2_ext.core.grid import CONSTANT_ROW_SPAN, center_step, dequantize, fake_quantize_per_token, quantize
from qsam2_ext.core.int_linear import quantize_tokens
from qsam2_ext.io import write_json, write_text

BITS = 8
# hiera_l at 1024², batch 8: (tokens, MLP hidden width) of stages 1-4
DEFAULT_SHAPES = ("524288x576", "131072x1152", "32768x2304", "8192x4608")


def gelu(h: torch.Tensor) -> torch.Tensor:
    return F.gelu(h)


def gelu_quantized(h: torch.Tensor) -> torch.Tensor:
    """What a compiled fc2 with dynamic 8-bit inputs traces: ``quantize_input`` of the GELU output."""
    y = F.gelu(h)
    return fake_quantize_per_token(y.float(), BITS).to(y.dtype)


def gelu_quantized_one_pass(h: torch.Tensor) -> torch.Tensor:
    """The same, with each row's min and max taken in one reduction (before ``row_extrema`` took them in chunks)."""
    y = F.gelu(h).float()
    lo, hi = y.amin(-1, keepdim=True), y.amax(-1, keepdim=True)
    center, step = center_step(lo, torch.maximum(hi, lo + CONSTANT_ROW_SPAN), BITS)
    return dequantize(quantize(y, center, step, BITS), center, step).to(h.dtype)


def gelu_codes(h: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What a compiled W·A8 layer inside ``integer_matmul()`` traced before ``qsam2_ext.kernels.code_ops``: the
    per-token codes, grids and code sums of the GELU output as ATen ops, which inductor fuses with the GELU."""
    codes, center, step = quantize_tokens(F.gelu(h).float(), BITS)
    return codes, center, step, codes.sum(-1, keepdim=True, dtype=torch.int32)


def gelu_codes_one_pass(h: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What it traces now: the GELU, then ``qsam2::quantize_tokens`` (one Triton pass, nothing fused into it)."""
    return kernels.quantize_tokens(F.gelu(h), BITS)


class PersistentReductions(InductorChoices):
    """Inductor's heuristics, but every reduction keeps its whole row in registers (read once)."""

    @staticmethod
    def should_use_persistent_reduction(*args, **kwargs) -> bool:
        return True


VARIANTS = {  # name: (function, inductor config, inductor choices)
    "gelu (bf16 model)": (gelu, {}, None),
    "gelu + quant, one-pass min/max": (gelu_quantized_one_pass, {}, None),
    "same, multi_kernel": (gelu_quantized_one_pass, {"triton.multi_kernel": 1}, None),
    "same, coordinate descent": (gelu_quantized_one_pass, {"coordinate_descent_tuning": True}, None),
    # the choices are not in the FX graph cache's key: without fx_graph_cache=False the row gets the one above
    "same, persistent": (gelu_quantized_one_pass, {"fx_graph_cache": False}, PersistentReductions),
    "gelu + quant (qsam2_ext: chunked min/max)": (gelu_quantized, {}, None),
    # the integer path's input: int8 codes, grids and code sums instead of the quantize-dequantized bf16 tensor
    "gelu + codes (ATen ops, fused by inductor)": (gelu_codes, {}, None),
    "gelu, then codes (qsam2::quantize_tokens, one pass)": (gelu_codes_one_pass, {}, None),
}


def triton_rows(h: torch.Tensor, compiled_gelu) -> torch.Tensor:
    from qsam2_ext.kernels.linear_op import _fake_quantized_rows

    return _fake_quantized_rows(compiled_gelu(h), None, None, BITS)


def compile_variant(fn, options: dict, choices, h: torch.Tensor, dump: str | None, name: str):
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    handler = V.set_choices_handler(choices()) if choices else contextlib.nullcontext()
    with torch._inductor.config.patch(options), handler:
        compiled = torch.compile(fn, dynamic=False)
        start = time.perf_counter()
        _, code = run_and_get_code(compiled, h)
        seconds = time.perf_counter() - start
    if dump:
        os.makedirs(dump, exist_ok=True)
        slug = "".join(c if c.isalnum() else "_" for c in name)
        write_text(os.path.join(dump, f"{slug}_{h.shape[0]}x{h.shape[1]}.py"), "\n\n".join(code))
    return compiled, seconds


def bench_shape(m: int, k: int, dump: str | None) -> list[dict]:
    import triton.testing

    h = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 2
    rows = []
    first = {}  # by kind of output (bf16 tensor, or codes): the first such row's, which the others are compared to
    for name, (fn, options, choices) in VARIANTS.items():
        compiled, seconds = compile_variant(fn, options, choices, h, dump, name)
        ms = triton.testing.do_bench(lambda: compiled(h), warmup=25, rep=200)
        out = compiled(h)
        out = out[0] if isinstance(out, tuple) else out  # codes: compared as codes
        kind = "codes" if out.dtype == torch.int8 else "bf16"
        if fn is not gelu and kind not in first:
            first[kind] = out
        # bytes a kernel must move: read the bf16 GEMM output once, write the quantized input (or codes) once
        moved = h.numel() * (h.element_size() + out.element_size())
        rows.append({"variant": name, "ms": ms, "compile_s": seconds, "tb_per_s": moved / ms / 1e9,
                     "mismatch": None if fn is gelu else (out != first[kind]).float().mean().item()})
    compiled_gelu, _ = compile_variant(gelu, {}, None, h, None, "gelu")
    ms = triton.testing.do_bench(lambda: triton_rows(h, compiled_gelu), warmup=25, rep=200)
    rows.append({"variant": "gelu, then Triton fake_quantize_rows", "ms": ms, "compile_s": None,
                 "tb_per_s": 2 * h.numel() * h.element_size() / ms / 1e9,
                 "mismatch": (triton_rows(h, compiled_gelu) != first["bf16"]).float().mean().item()})
    base = rows[0]["ms"]
    for row in rows:
        row.update(shape=f"{m}x{k}", ratio=row["ms"] / base)
    return rows


LEGEND = ("ms: median of `triton.testing.do_bench`; × gelu: to the shape's first row; TB/s: bytes a fused kernel "
          "must move (read the bf16 GEMM output, write the bf16 quantized input) per second; mismatch: fraction of "
          "outputs that differ from the one-pass row's (the Triton row's GELU is rounded to bf16 by its own kernel "
          "first); compile s: first call of the compiled function.")
CODES_LEGEND = (" Rows named \"codes\" write int8 codes (and per-row grids and code sums) instead: their TB/s counts "
                "one byte written per input, their mismatch is the fraction of codes that differ from the first codes "
                "row's (inductor's fused GELU is not rounded to bf16 before the quantization, a GELU kernel's output "
                "is).")


def table(rows: list[dict]) -> str:
    lines = ["| shape | variant | ms | × gelu | TB/s | mismatch | compile s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        mismatch = "" if r["mismatch"] is None else f"{r['mismatch']:.2e}"
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        lines.append(f"| {r['shape']} | {r['variant']} | {r['ms']:.3f} | {r['ratio']:.2f} | {r['tb_per_s']:.2f} "
                     f"| {mismatch} | {compile_s} |")
    return "\n".join(lines)


def markdown(meta: dict, rows: list[dict]) -> str:
    legend = LEGEND + (CODES_LEGEND if any("codes" in r["variant"] for r in rows) else "")
    return (f"# Per-token activation quantization fused into GELU ({meta['device']}, torch {meta['torch']})\n\n"
            f"`{meta['command']}` ({meta['date']})\n\n{legend}\n\n{table(rows)}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="TOKENSxWIDTH of the GELU output")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--dump-code", default=None, help="write inductor's generated code of each row here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("act_quant.py measures CUDA kernels: no CUDA device here")
    rows = []
    with torch.inference_mode():
        for shape in args.shapes:
            m, k = (int(v) for v in shape.lower().split("x"))
            rows += bench_shape(m, k, args.dump_code)
            print(table(rows[-len(VARIANTS) - 1:]), flush=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "command": shlex.join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(os.path.join(args.out, "act_quant.json"), {"meta": meta, "rows": rows})
    write_text(os.path.join(args.out, "act_quant.md"), markdown(meta, rows))


if __name__ == "__main__":
    main()
