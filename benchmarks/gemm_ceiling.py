"""The room that swapping GEMMs alone leaves: each Linear shape of a SAM2 image encoder, GEMM by GEMM, on CUDA.

    python benchmarks/gemm_ceiling.py                                   # sam2.1_hiera_l at 1024², batch 8
    python benchmarks/gemm_ceiling.py --model sam2.1_hiera_t --batch 1 --no-layers

For each distinct encoder Linear shape (``M`` tokens at this batch, ``K`` inputs, ``N`` outputs; ``count`` layers of
that shape, i.e. blocks), with every input already in the GEMM's own dtype:

* ``bf16``: ``F.linear`` in bf16 with bias (cuBLAS): the baseline;
* ``fp8 rowwise``: ``torch._scaled_mm`` on e4m3 with per-row / per-column scales and bf16 output (what torchao's
  ``Float8DynamicActivationFloat8WeightConfig(PerRow)`` runs, without its activation quantization);
* ``fp8 exact``: ``torch._scaled_mm`` with unit scales and float32 output: the exact code product of our A4 layers
  (``qsam2_ext.kernels.fp8_linear``, path ``"fp8"``), before its epilogue;
* ``int8``: ``torch._int_mm`` (int32 output): what W8A8 / W2A8 layers trace on CUDA inside ``integer_matmul()``;
* ``W2A4 layer`` (unless ``--no-layers``): a whole packed W2A4 ``nn.Linear`` compiled on its own from a bf16 input
  (per-token 4-bit quantization of the input, unpacked 2-bit weight codes, the FP8 product, the epilogue), on the
  path the shape's measurement chose: an upper bound, since in an encoder the quantization fuses into the producer.

Each time is GPU work only: 10 calls captured as a CUDA graph, the median of 10 replays. Totals weight each shape
by its count; ratios are to bf16. Writes ``<out>/gemm_ceiling.json`` and ``gemm_ceiling.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed_timing import graph_ms  # noqa: E402

from qsam2_ext.io import write_json, write_text  # noqa: E402


GEMMS = ("bf16", "fp8 rowwise", "fp8 exact", "int8")


def encoder_shapes(model: str, batch: int) -> dict[tuple[int, int, int], int]:
    """``(M, K, N) -> count`` of the encoder's Linear layers, from one bf16 call on one image (tokens scale with the
    batch: windows are padded per image)."""
    from qsam2_ext.sam2.models import build_model

    encoder = build_model(model, device="cuda").image_encoder.to(torch.bfloat16).eval()
    shapes: dict[tuple[int, int, int], int] = {}

    def count(module, inputs, output):
        key = (batch * (inputs[0].numel() // module.in_features), module.in_features, module.out_features)
        shapes[key] = shapes.get(key, 0) + 1

    hooks = [m.register_forward_hook(count) for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
    with torch.inference_mode():
        encoder(torch.randn(1, 3, 1024, 1024, device="cuda", dtype=torch.bfloat16))
    for h in hooks:
        h.remove()
    return dict(sorted(shapes.items()))


def gemms(m: int, k: int, n: int) -> dict:
    """The four GEMMs of one shape on random operands (never zeros: they can run faster)."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    a8 = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
    b8 = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
    af, bf = a8.to(torch.float16).to(torch.float8_e4m3fn), b8.to(torch.float16).to(torch.float8_e4m3fn)
    s_x, s_w = torch.rand(m, 1, device="cuda") + 0.5, torch.rand(1, n, device="cuda") + 0.5
    one = torch.ones((), device="cuda")
    return {
        "bf16": lambda: F.linear(x, w, bias),
        "fp8 rowwise": lambda: torch._scaled_mm(af, bf.t(), s_x, s_w, out_dtype=torch.bfloat16),
        "fp8 exact": lambda: torch._scaled_mm(af, bf.t(), one, one, out_dtype=torch.float32),
        "int8": lambda: torch._int_mm(a8, b8.t()),
    }


def a4_layer(m: int, k: int, n: int):
    """A compiled packed W2A4 Linear on a bf16 input, inside ``integer_matmul()`` (its FP8 path), and the path."""
    from torchao.quantization import quantize_

    import qsam2_ext
    from qsam2_ext.kernels import fp8_linear

    layer = torch.nn.Sequential(torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16))
    quantize_(layer, qsam2_ext.qsam2_config(bits=2, act_bits=4), filter_fn=None)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(layer, dynamic=False)

    def call():  # inside integer_matmul() at every call: dynamo guards on it (the weight's flatten context)
        with qsam2_ext.integer_matmul(force=True):
            return compiled(x)

    with torch.inference_mode():
        call()
    return call, fp8_linear.chosen_paths().get((0, m, k, n), "bf16")


def markdown(meta: dict, rows: list[dict]) -> str:
    columns = [c for c in (*GEMMS, "W2A4 layer") if any(c in r["ms"] for r in rows)]
    lines = [f"GEMM ceiling: {meta['model']} encoder Linear shapes at batch {meta['batch']}, on {meta['device']} "
             f"(torch {meta['torch']}); GPU work per call (CUDA graphs), ms, and × bf16.", "",
             f"Command: `{meta['command']}`", "",
             "| M | K | N | count | " + " | ".join(columns) + " | A4 path |",
             "|---:|---:|---:|---:|" + "---:|" * len(columns) + "---|"]
    for r in rows:
        cells = [f"{r['ms'][c]:.3f} ({r['ms'][c] / r['ms']['bf16']:.2f})" if c in r["ms"] else "—" for c in columns]
        lines.append(f"| {r['M']} | {r['K']} | {r['N']} | {r['count']} | " + " | ".join(cells)
                     + f" | {r.get('a4_path', '—')} |")
    totals = {c: sum(r["count"] * r["ms"][c] for r in rows if c in r["ms"]) for c in columns}
    cells = [f"**{totals[c]:.2f} ({totals[c] / totals['bf16']:.2f})**" for c in columns]
    lines.append("| all, × count |||| " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sam2.1_hiera_l")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-layers", action="store_true", help="leave out the compiled W2A4 layer column")
    p.add_argument("--out", default="out/speed")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gemm_ceiling.py needs a CUDA GPU")
    meta = {"model": args.model, "batch": args.batch, "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": shlex.join(["python", "benchmarks/gemm_ceiling.py"] + sys.argv[1:])}
    rows = []
    for (m, k, n), count in encoder_shapes(args.model, args.batch).items():
        row = {"M": m, "K": k, "N": n, "count": count, "ms": {}}
        with torch.inference_mode():
            for name, fn in gemms(m, k, n).items():
                try:
                    row["ms"][name] = graph_ms(fn)
                except RuntimeError as e:  # a GEMM this build or card lacks: reported, not fatal
                    row.setdefault("errors", {})[name] = str(e)[:200]
        if not args.no_layers:
            torch._dynamo.reset()
            call, row["a4_path"] = a4_layer(m, k, n)
            with torch.inference_mode():
                row["ms"]["W2A4 layer"] = graph_ms(call)
        rows.append(row)
        print(row, flush=True)
        torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "gemm_ceiling.json"), {"meta": meta, "rows": rows})
    text = markdown(meta, rows)
    write_text(os.path.join(args.out, "gemm_ceiling.md"), text)
    print(text)


if __name__ == "__main__":
    main()
