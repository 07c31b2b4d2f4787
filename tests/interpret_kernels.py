"""Runs the Triton kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``, set before Triton loads) and
checks them against the core's float32 references; ``test_kernels_interpreted`` starts it in a subprocess.

The interpreter emulates the kernels' arithmetic with NumPy, so CI machines without a GPU still check the
kernels' logic (indexing, unpacking, masking, grids, the int8 expansion). It has no bfloat16 matrix product and
no autotuner: fp16 inputs and two fixed tile shapes (partial tiles, several K steps, a K tile longer than K).
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from qsam2_ext.core import dequantize, int_linear, pack_codes, quantize  # noqa: E402
from qsam2_ext.core.int_linear import quantize_tokens  # noqa: E402
from qsam2_ext.kernels import linear_op  # noqa: E402
from qsam2_ext.kernels import triton_packed as tk  # noqa: E402

M, K, N = 37, 96, 40
# small tiles (partial row and column tiles, several K steps) and one K tile longer than K (masked K)
TILE_SHAPES = ({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}, {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 128})


def programs(tiles):
    return (-(-M // tiles["BLOCK_M"]) * -(-N // tiles["BLOCK_N"]),)


def weight(bits, groups):
    codes = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (N, K), dtype=torch.int8)
    center, step = torch.randn(N, groups) * 0.01, torch.rand(N, groups) * 0.02 + 0.005
    dense = dequantize(codes.reshape(N, groups, -1), center.unsqueeze(-1), step.unsqueeze(-1)).reshape(N, K)
    return pack_codes(codes, bits), codes, center, step, dense


def relative_error(y, ref):
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def main() -> None:
    for tiles in TILE_SHAPES:
        check(tiles)
    print("interpreted kernels match the references")


def check(tiles) -> None:
    torch.manual_seed(0)
    x = torch.randn(M, K).half()
    bias = torch.randn(N).half()
    for bits in (2, 4, 8):
        for groups in (1, 3):
            packed, codes, center, step, dense = weight(bits, groups)
            # the dense weight: exactly the reference's float32 dequantization
            assert torch.equal(linear_op._dense_weight(packed, center, step, bits, K, torch.float32), dense)
            y = torch.empty(M, N, dtype=torch.half)
            tk.a16_linear.fn[programs(tiles)](
                x, packed, center, step, bias, y, M, N, K, x.stride(0), packed.stride(0), y.stride(0), K // groups,
                groups, BITS=bits, GROUPED=groups > 1, HAS_BIAS=True, **tiles)
            ref = F.linear(x.float(), dense.half().float(), bias.float())
            assert relative_error(y, ref) < 2e-3, ("a16", bits, groups, relative_error(y, ref))
        packed, codes, center, step, _ = weight(bits, 1)  # int8 products take per-channel weight grids
        static_grid = (torch.tensor(0.05), torch.tensor(0.04))
        for act_bits in (8, 4):
            a, xc, xs = quantize_tokens(x.float(), act_bits)
            # fake-quantized rows: the reference's per-token grid, bit for bit in float32
            fq = linear_op._fake_quantized_rows(x.float(), None, None, act_bits)
            assert torch.equal(fq, dequantize(a, xc, xs)), ("rows", act_bits)
            for static in (False, True):
                if static:
                    a, xc, xs = quantize(x.float(), *static_grid, act_bits), *static_grid
                ref = int_linear(a, xc, xs, codes, center, step, bias.float())
                y = torch.empty(M, N, dtype=torch.half)
                tk.a8_linear.fn[programs(tiles)](
                    x, packed, center, step, bias, *static_grid, y, M, N, K, x.stride(0), packed.stride(0),
                    y.stride(0), BITS=bits, ACT_BITS=act_bits, DYNAMIC=not static, HAS_BIAS=True, **tiles)
                assert relative_error(y, ref) < 2e-3, ("a8", bits, act_bits, static, relative_error(y, ref))


if __name__ == "__main__":
    sys.exit(main())
