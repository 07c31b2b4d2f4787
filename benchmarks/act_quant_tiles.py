"""Where the one-pass per-token quantizer (``qsam2::quantize_tokens``) loses to the memory bandwidth, on CUDA.

    python benchmarks/act_quant_tiles.py --out out/tiles

For each layer-input shape of hiera_l at batch 8 (tokens x channels of the qkv / fc1 and fc2 inputs of stages 1-4),
times with ``triton.testing.do_bench``:

* ``copy``: a Triton kernel that reads the bf16 rows and writes one byte per input, nothing else (the bandwidth
  bound of any such pass);
* ``op``: ``torch.ops.qsam2.quantize_tokens`` as the model calls it (its own rows-a-program and warps rule);
* ``tile RxW``: the same kernel (``code_ops.quantize_token_rows``) with R rows a program and W warps, for every
  tile of 1024-8192 inputs at 8 or 16 inputs a thread (is the rule's tile the best?);
* ``reciprocal``: the same pass (the op's tile) with the IEEE division of each input by its row's step
  (``div_rn``, which makes the codes equal the reference's) replaced by a product with the step's reciprocal (is
  the division the cost?).

Writes ``<out>/act_quant_tiles.json`` and ``.md``: ms and TB/s (bf16 read + codes written) per row.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
import triton
import triton.language as tl

from qsam2_ext.io import write_json, write_text

BITS = 4
# hiera_l at 1024², batch 8: (tokens, channels) of each stage's qkv/fc1 input and fc2 input
SHAPES = ("524288x144", "524288x576", "131072x288", "131072x1152", "32768x576", "32768x2304", "8192x1152",
          "8192x4608")


@triton.jit
def _copy_rows(x_ptr, out_ptr, M, K, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    ok = (rm < M)[:, None] & (rk < K)[None, :]
    offs = rm[:, None].to(tl.int64) * K + rk[None, :]
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.int8), mask=ok)


@triton.jit
def _reciprocal_rows(x_ptr, codes_ptr, center_ptr, step_ptr, sum_ptr, M, K, BITS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """``quantize_token_rows``' one pass with a product by the step's reciprocal instead of the IEEE division."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    ok = (rm < M)[:, None] & (rk < K)[None, :]
    x = tl.load(x_ptr + rm[:, None].to(tl.int64) * K + rk[None, :], mask=ok, other=0.0).to(tl.float32)
    lo = tl.min(tl.where(ok, x, float("inf")), axis=1)
    hi = tl.max(tl.where(ok, x, float("-inf")), axis=1)
    hi = tl.maximum(hi, lo + 1e-19)
    center = (lo + hi) * 0.5
    step = (hi - lo) / ((1 << BITS) - 1.0)
    q = tl.floor((x - center[:, None]) * (1.0 / step)[:, None])
    q = tl.minimum(tl.maximum(q, -(1 << (BITS - 1)) * 1.0), (1 << (BITS - 1)) - 1.0)
    q = tl.where(ok, q, 0.0)
    tl.store(codes_ptr + rm[:, None].to(tl.int64) * K + rk[None, :], q.to(tl.int8), mask=ok)
    tl.store(center_ptr + rm, center, mask=rm < M)
    tl.store(step_ptr + rm, step, mask=rm < M)
    tl.store(sum_ptr + rm, tl.sum(q.to(tl.int32), axis=1), mask=rm < M)


def tiles(block_k: int) -> list[tuple[int, int]]:
    """(rows a program, warps) of every tile of 1024-8192 inputs holding whole rows, 8 or 16 inputs a thread."""
    return sorted({(tile // block_k, min(16, max(4, tile // per_thread // 32)))
                   for tile in (1024, 2048, 4096, 8192) if tile >= block_k for per_thread in (8, 16)})


def bench_shape(m: int, k: int) -> list[dict]:
    from triton.testing import do_bench

    from qsam2_ext.kernels import code_ops

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 2
    codes = torch.empty(m, k, device="cuda", dtype=torch.int8)
    center, step = (torch.empty(m, 1, device="cuda") for _ in range(2))
    sums = torch.empty(m, 1, device="cuda", dtype=torch.int32)
    block_k, rule_m, rule_warps, _ = code_ops.token_tile(k)  # the op's own tile
    runs = {"copy": lambda: _copy_rows[(triton.cdiv(m, rule_m),)](x, codes, m, k, BLOCK_M=rule_m, BLOCK_K=block_k),
            "op": lambda: torch.ops.qsam2.quantize_tokens(x, BITS, False)}
    for rows, warps in tiles(block_k):
        runs[f"tile {rows}x{warps}"] = (lambda rows=rows, warps=warps: code_ops.quantize_token_rows[
            (triton.cdiv(m, rows),)](x, codes, center, step, sums, m, k, x.stride(0), BITS=BITS, BLOCK_M=rows,
                                     BLOCK_K=block_k, ONE_PASS=True, num_warps=warps))
    runs["reciprocal"] = lambda: _reciprocal_rows[(triton.cdiv(m, rule_m),)](
        x, codes, center, step, sums, m, k, BITS=BITS, BLOCK_M=rule_m, BLOCK_K=block_k, num_warps=rule_warps)
    moved = x.numel() * 3  # bf16 read, one byte written
    rows = []
    for name, fn in runs.items():
        ms = do_bench(fn, warmup=10, rep=50)
        rows.append({"shape": f"{m}x{k}", "variant": name, "ms": ms, "tb_per_s": moved / ms / 1e9})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| shape | variant | ms | TB/s |", "|---|---|---:|---:|"]
    lines += [f"| {r['shape']} | {r['variant']} | {r['ms']:.3f} | {r['tb_per_s']:.2f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), help="TOKENSxCHANNELS")
    p.add_argument("--out", default="out/act_quant_tiles")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("act_quant_tiles.py measures CUDA kernels: no CUDA device here")
    rows = []
    with torch.inference_mode():
        for shape in args.shapes:
            m, k = (int(v) for v in shape.lower().split("x"))
            new = bench_shape(m, k)
            rows += new
            print(table(new), flush=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "bits": BITS,
            "command": shlex.join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(os.path.join(args.out, "act_quant_tiles.json"), {"meta": meta, "rows": rows})
    write_text(os.path.join(args.out, "act_quant_tiles.md"),
               f"# One-pass per-token quantization: tiles and division ({meta['device']}, torch {meta['torch']})\n\n"
               f"`{meta['command']}` ({meta['date']}), {BITS}-bit codes; TB/s: bf16 read + one byte written per "
               f"input, per second.\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
