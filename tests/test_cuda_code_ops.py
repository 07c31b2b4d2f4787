"""``qsam2_ext.kernels.code_ops`` on a CUDA GPU (skipped without one): the one-pass per-token quantization and the
weight unpacking against independent references, eager and under ``torch.compile``, and compiled packed layers that
take them.

The reference grid here divides elementwise (IEEE, as the kernel's ``div_rn``): PyTorch divides a CUDA tensor by a
Python number as a product with its reciprocal, so ``core.quantize_tokens``' step can be one ulp off the exact
quotient, and then a code one level off (checked below: only in such rows, by one level).
"""

import re

import pytest
import torch
from helpers import grid_boundary_rows

from qsam2_ext.core import pack_codes, quantize, unpack_codes
from qsam2_ext.core.grid import CONSTANT_ROW_SPAN
from qsam2_ext.core.int_linear import int_linear, quantize_tokens

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

M = 1000


def register_ops() -> None:
    """Import ``code_ops``: it registers ``torch.ops.qsam2.quantize_tokens`` and ``unpack_codes``."""
    from qsam2_ext.kernels import code_ops  # noqa: F401


def rows(m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(m, k, device="cuda") * 3 + 0.5
    x[0] = 0.0
    x[1] = -1.75
    x[2, k // 2] = float("nan")
    x[3, 0] = float("inf")
    x[4, -1] = float("-inf")
    return x.to(dtype)


def exact_grid(xf: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``core.token_grid`` with correctly rounded divisions."""
    lo, hi = xf.amin(1, keepdim=True), xf.amax(1, keepdim=True)
    hi = torch.maximum(hi, lo + CONSTANT_ROW_SPAN)
    return (lo + hi) / torch.full_like(hi, 2.0), (hi - lo) / torch.full_like(hi, 2**bits - 1)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("k", [144, 1152, 4608, 16484])  # hiera_l's narrowest and widest inputs; the two-pass loop
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bits,fp8", [(8, False), (4, False), (4, True), (2, True)])
def test_quantize_tokens_op_matches_the_reference(k, dtype, bits, fp8):
    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 e4m3 needs compute capability 8.9 or later")
    register_ops()
    x = rows(M, k, dtype)
    codes, center, step, sums = torch.ops.qsam2.quantize_tokens(x, bits, fp8)
    assert codes.dtype == (torch.float8_e4m3fn if fp8 else torch.int8)
    xf = x.float()
    ref_center, ref_step = exact_grid(xf, bits)
    ref = quantize(xf, ref_center, ref_step, bits)
    assert same(center, ref_center) and same(step, ref_step)
    assert torch.equal(codes.float(), ref.float())
    assert torch.equal(sums, ref.sum(-1, keepdim=True, dtype=torch.int32))
    assert center[2].isnan() and step[2].isnan()  # a NaN input: a NaN grid, so the layer answers NaN
    # against the package's reference on CUDA: centers equal; steps at most one ulp apart, and codes off by at most
    # one level, only in the rows whose step differs
    eager, eager_center, eager_step = quantize_tokens(xf, bits)
    assert same(center, eager_center)
    finite = step.isfinite().squeeze(1)
    assert ((step[finite] - eager_step[finite]).abs() <= torch.finfo(torch.float32).eps * step[finite]).all()
    off = (codes.float() != eager.float()).any(1)
    assert not off[(step == eager_step).squeeze(1)].any()
    assert (codes.float() - eager.float()).abs().max() <= 1


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantize_tokens_op_on_grid_boundaries(bits):
    """Inputs on their rows' grid boundaries ``center + j step`` and one or two ulps either side, at magnitudes from
    2^-110 to 2^110: the kernel's codes are the elementwise-division reference's."""
    register_ops()
    torch.manual_seed(bits)
    x = grid_boundary_rows(64, 2048, bits, "cuda")
    codes, center, step_op, _ = torch.ops.qsam2.quantize_tokens(x, bits, False)
    ref_center, ref_step = exact_grid(x, bits)
    assert same(center, ref_center) and same(step_op, ref_step)
    ref = quantize(x, ref_center, ref_step, bits)
    assert torch.equal(codes, ref), (codes != ref).sum().item()


@pytest.mark.parametrize("bits,fp8", [(2, True), (4, True), (2, False), (4, False), (8, False)])
def test_unpack_codes_op_matches_unpack_codes(bits, fp8):
    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 e4m3 needs compute capability 8.9 or later")
    register_ops()
    n, k = 300, 1155  # not a multiple of the packing group
    ref = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (n, k), dtype=torch.int8, device="cuda")
    packed = pack_codes(ref, bits)
    assert torch.equal(unpack_codes(packed, bits, k), ref)
    codes, sums = torch.ops.qsam2.unpack_codes(packed, bits, k, fp8)
    assert torch.equal(codes.float(), ref.float())
    assert torch.equal(sums, ref.sum(-1, dtype=torch.int32))


@pytest.mark.parametrize("fp8", [False, True])
def test_ops_compile_as_opaque_kernels(fp8):
    """Under torch.compile the ops run their own kernels, with nothing fused into them (no inductor reduction on the
    rows), and give the eager ops' bits; torch.library.opcheck passes (schema, fake tensors, AOT dispatch with
    dynamic shapes)."""
    from torch._inductor.utils import run_and_get_code

    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 e4m3 needs compute capability 8.9 or later")
    register_ops()
    x = rows(M, 576, torch.bfloat16)
    packed = pack_codes(torch.randint(-2, 2, (256, 576), dtype=torch.int8, device="cuda"), 2)
    if not fp8:  # opcheck compares outputs with assert_close: no float8, no NaN
        clean = torch.randn(M, 576, device="cuda").to(torch.bfloat16)
        torch.library.opcheck(torch.ops.qsam2.quantize_tokens.default, (clean, 4, False))
        torch.library.opcheck(torch.ops.qsam2.unpack_codes.default, (packed, 2, 576, False))

    def f(x, packed):  # a producer inductor would have fused the quantization into (exact: the same bits eager)
        return torch.ops.qsam2.quantize_tokens(x * 2, 4, fp8), torch.ops.qsam2.unpack_codes(packed, 2, 576, fp8)

    torch._dynamo.reset()
    compiled, code = run_and_get_code(torch.compile(f, dynamic=False), x, packed)
    code = "".join(code)
    assert "quantize_token_rows" in code and "unpack_code_rows" in code
    assert not fused_reductions(code, any_reduction=True)
    for out, ref in zip([*compiled[0], *compiled[1]], [*f(x, packed)[0], *f(x, packed)[1]]):
        assert out.dtype == ref.dtype and same(out.float(), ref.float())


def fused_reductions(code: str, any_reduction: bool = False) -> list[str]:
    """What inductor made of a quantization it would have fused: reduction kernels that take a min or max (with
    ``any_reduction``, every reduction kernel), or ATen amin/amax calls. Names only: the code ops' own Triton source,
    which the generated code includes with its docstrings, does not count."""
    kernels = r"triton_(?:red|per)_\w+" if any_reduction else r"triton_(?:red|per)_fused\w*?_am(?:ax|in)\w*"
    return re.findall(rf"\b(?:{kernels}|aten\.am(?:ax|in))\b", code)


def layer_reference(x, layer, product):
    """The integer reference of a packed layer on ``x``: exact grids, the weight's codes, ``int_linear``."""
    w = layer.weight
    xf = x.float()
    center, step = exact_grid(xf, w.act_bits)
    codes = quantize(xf, center, step, w.act_bits)
    weight_codes = w.codes().reshape(w.weight_shape[0], -1)
    return int_linear(codes, center, step, weight_codes, w.center, w.step, layer.bias, w.bits, product=product)


@pytest.mark.parametrize("bits,act_bits", [(2, 4), (4, 4), (2, 8), (8, 8)])
def test_compiled_packed_layers_take_the_code_ops(bits, act_bits):
    """Compiled inside ``integer_matmul()``, W2A4 / W4A4 (FP8 path "fp8", the exact product) and W2A8 / W8A8
    (``torch._int_mm``) layers quantize their inputs and unpack their weights with the code ops, with no inductor
    reduction left, and agree with the integer reference up to the epilogue's float rounding."""
    import qsam2_ext
    from torch._inductor.utils import run_and_get_code
    from torchao.quantization import quantize_

    from qsam2_ext.kernels import fp8_linear

    if act_bits == 4 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("the FP8 path needs compute capability 8.9 or later")
    layer = torch.nn.Linear(576, 208).cuda().bfloat16()
    quantize_(layer, qsam2_ext.qsam2_config(bits=bits, act_bits=act_bits), filter_fn=None)
    x = torch.randn(M, 576, device="cuda").to(torch.bfloat16)
    with torch.inference_mode():
        torch._dynamo.reset()
        with qsam2_ext.integer_matmul(force=True), fp8_linear.force_path("fp8"):
            out, code = run_and_get_code(torch.compile(layer, dynamic=False), x)
        product = fp8_linear.scaled_product("fp8") if act_bits == 4 else None
        ref = layer_reference(x, layer, product)
    code = "".join(code)
    assert "quantize_token_rows" in code and "unpack_code_rows" in code
    assert ("_scaled_mm" in code) == (act_bits == 4) and ("_int_mm" in code) == (act_bits == 8)
    assert not fused_reductions(code)
    diff = (out.float() - ref).abs()
    assert diff.max() <= 2 ** -7 * ref.abs().max()  # bf16 rounding of the output
    assert (diff > 2 ** -7 * ref.abs()).float().mean() < 1e-3
