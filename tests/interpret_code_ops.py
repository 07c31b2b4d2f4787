"""Runs ``qsam2_ext.kernels.code_ops``' ops under Triton's CPU interpreter (``TRITON_INTERPRET=1``, set before Triton
loads) against the core's references, bit for bit; ``test_kernels_interpreted`` starts it in a subprocess.

On a CPU PyTorch divides exactly, as the kernels do (``tl.math.div_rn``), so codes, centers, steps and sums must
equal ``quantize_tokens(x.float(), bits)``'s everywhere: rows of any length (one tile, several rows to a program,
and the two-pass loop beyond ``ONE_PASS_MAX``), constant rows, rows holding NaN or infinities, and inputs on and
next to their grid's boundaries.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from helpers import grid_boundary_rows  # noqa: E402

from qsam2_ext.core import pack_codes, unpack_codes  # noqa: E402
from qsam2_ext.core.int_linear import int_linear, quantize_tokens, weight_columns  # noqa: E402
from qsam2_ext.kernels import code_ops  # noqa: E402


def rows(m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(m, k) * 3 + 0.5
    x[0] = 0.0  # a zero row: the smallest grid (CONSTANT_ROW_SPAN)
    if m > 2:
        x[1] = -1.75  # a nonzero constant row
        x[2, k // 2] = float("nan")
    if m > 4:
        x[3, 0] = float("inf")
        x[4, -1] = float("-inf")
    return x.to(dtype)


def check_boundaries(m: int, k: int, bits: int) -> None:
    x = grid_boundary_rows(m, k, bits)
    codes, center, step, _ = torch.ops.qsam2.quantize_tokens(x, bits, False)
    ref, ref_center, ref_step = quantize_tokens(x, bits)
    assert same(center, ref_center) and same(step, ref_step), (m, k, bits)
    assert torch.equal(codes, ref), (m, k, bits, (codes != ref).sum().item())


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where the other is NaN (the bits of a NaN are no result)."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(((a == b) | (a.isnan() & b.isnan())).all())


def check_tokens(m: int, k: int, dtype: torch.dtype, bits: int, fp8: bool) -> None:
    x = rows(m, k, dtype)
    codes, center, step, sums = torch.ops.qsam2.quantize_tokens(x, bits, fp8)
    ref, ref_center, ref_step = quantize_tokens(x.float(), bits)
    what = (m, k, dtype, bits, fp8)
    assert codes.dtype == (torch.float8_e4m3fn if fp8 else torch.int8), what
    assert torch.equal(codes.float(), ref.float()), what
    assert same(center, ref_center) and same(step, ref_step), what
    assert torch.equal(sums, ref.sum(dim=-1, keepdim=True, dtype=torch.int32)), what


def check_weight(n: int, k: int, bits: int, fp8: bool) -> None:
    ref = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (n, k), dtype=torch.int8)
    packed = pack_codes(ref, bits)
    codes, sums = torch.ops.qsam2.unpack_codes(packed, bits, k, fp8)
    assert torch.equal(unpack_codes(packed, bits, k), ref)
    assert torch.equal(codes.float(), ref.float()), (n, k, bits, fp8)
    assert torch.equal(sums, ref.sum(dim=-1, dtype=torch.int32)), (n, k, bits, fp8)
    # the inputs after the first byte's codes: rows whose stride is longer than the row, as sharded loading makes
    per = 8 // bits
    codes, sums = torch.ops.qsam2.unpack_codes(packed[:, 1:], bits, k - per, fp8)
    assert torch.equal(codes.float(), ref[:, per:].float())
    assert torch.equal(sums, ref[:, per:].sum(-1, dtype=torch.int32))


def check_layer() -> None:
    """``int_linear`` fed the ops' codes and sums (as a compiled CUDA layer is) gives the reference's bits."""
    x, w = torch.randn(45, 100).bfloat16(), torch.randint(-2, 2, (24, 100), dtype=torch.int8)
    center, step, bias = torch.randn(24, 1) * 0.01, torch.rand(24, 1) * 0.02 + 0.005, torch.randn(24)
    codes, xc, xs, sums = torch.ops.qsam2.quantize_tokens(x, 8, False)
    wcodes, wsums = torch.ops.qsam2.unpack_codes(pack_codes(w, 2), 2, 100, False)
    columns = weight_columns(wcodes, center, step, bias, code_sums=wsums)
    y = int_linear(codes, xc, xs, wcodes, center, step, bias, 2, columns=columns, code_sums=sums)
    assert torch.equal(y, int_linear(*quantize_tokens(x.float(), 8), w, center, step, bias, 2))


def main() -> None:
    check_layer()
    torch.manual_seed(0)
    for m, k in ((1, 1), (7, 5), (37, 96), (19, 144), (9, 600), (5, 2304), (3, code_ops.ONE_PASS_MAX + 100)):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for bits, fp8 in ((8, False), (4, False), (4, True), (2, True), (3, False)):
                check_tokens(m, k, dtype, bits, fp8)
    for bits in (2, 3, 4, 8):
        for m, k in ((23, 512), (5, code_ops.ONE_PASS_MAX + 100)):
            check_boundaries(m, k, bits)
    for n, k in ((1, 9), (21, 97), (40, 300)):
        for bits, fp8 in ((2, True), (4, True), (2, False), (4, False), (8, False)):
            check_weight(n, k, bits, fp8)
    try:
        torch.ops.qsam2.quantize_tokens(torch.zeros(2, 8), 8, True)
    except ValueError as e:
        assert "e4m3" in str(e)
    else:
        raise AssertionError("8-bit codes in e4m3 were accepted")
    print("interpreted code ops match the references")


if __name__ == "__main__":
    sys.exit(main())
