"""The Triton kernels for packed layers on a CUDA GPU, against independent float32 references (skipped without one).

Activation codes are compared through ``int_linear`` on ``quantize_tokens(x.float())``: the kernels compute every
grid in float32 with correctly rounded division, so only the bf16/fp16 rounding of the output remains.
"""

import pytest
import torch
from torch.nn import functional as F

from qsam2_ext.core import dequantize, int_linear, quantize

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

M, K, N = 300, 192, 200  # none a multiple of the tiles


def packed_weight(bits, groups, dtype, act_bits=None, act_grid=None, n=N):
    from qsam2_ext.integrations.torchao import QSAM2PackedTensor

    codes = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (n, K), dtype=torch.int8, device="cuda")
    center = torch.randn(n, groups, device="cuda") * 0.01
    step = torch.rand(n, groups, device="cuda") * 0.02 + 0.005
    weight = QSAM2PackedTensor.from_codes(codes, center, step, bits, dtype, torch.float32, act_bits, act_grid)
    dense = dequantize(codes.reshape(n, groups, -1), center.unsqueeze(-1), step.unsqueeze(-1)).reshape(n, K)
    return weight, codes, center, step, dense


def run(x, weight, bias, path):
    from qsam2_ext.kernels.linear_op import force_path

    with force_path(path), torch.inference_mode():
        return F.linear(x, weight, bias)


def relative_error(y, ref):
    return float((y.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("path", ["fused", "unfused"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("groups", [1, 6])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_float_inputs_match_dequantized_product(bits, groups, dtype, path):
    weight, _, _, _, dense = packed_weight(bits, groups, dtype)
    x = torch.randn(2, M // 2, K, device="cuda").to(dtype)
    bias = torch.randn(N, device="cuda").to(dtype)
    y = run(x, weight, bias, path)
    assert y.shape == (2, M // 2, N) and y.dtype == dtype
    # the reference: the same weights rounded to the input dtype (as F.linear on dequantize(dtype) sees them)
    ref = F.linear(x.float(), dense.to(dtype).float(), bias.float())
    assert relative_error(y, ref) < 4e-3
    from qsam2_ext.kernels import cuda_kernels

    with cuda_kernels(False), torch.inference_mode():  # the package's reference path
        assert relative_error(y, F.linear(x, weight, bias)) < 4e-3


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("act_bits", [8, 4])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_int8_product_matches_integer_reference(bits, act_bits, static):
    """The fused W{bits}A{act_bits} GEMM equals int_linear on the same float32 codes up to output rounding."""
    grid = (torch.tensor(0.05, device="cuda"), torch.tensor(0.04, device="cuda")) if static else None
    weight, codes, center, step, _ = packed_weight(bits, 1, torch.bfloat16, act_bits, grid)
    x = torch.randn(M, K, device="cuda").to(torch.bfloat16)
    bias = torch.randn(N, device="cuda").to(torch.bfloat16)
    xf = x.float()
    if static:
        xc, xs = grid
    else:  # token_grid with an elementwise (IEEE) division, as the kernel's: PyTorch may divide a CUDA tensor by a
        # Python number as a product with its reciprocal, one ulp off at times, and a step one ulp off can move an
        # activation across a level (a row of outputs then differs by one step)
        lo, hi = xf.amin(1, keepdim=True), xf.amax(1, keepdim=True)
        xc, xs = (lo + hi) / 2, (hi - lo) / torch.full_like(hi, 2**act_bits - 1)
    a = quantize(xf, xc, xs, act_bits)
    ref = int_linear(a, xc, xs, codes, center, step, bias.float())
    fused = run(x, weight, bias, "fused")
    assert relative_error(fused, ref) < 3e-3
    assert (fused.float() - ref).abs().max() <= 2 ** -7 * ref.abs().max()
    # the unfused path rounds the dequantized inputs and weights to bf16 before cuBLAS
    assert relative_error(run(x, weight, bias, "unfused"), ref) < 1e-2


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("bits", [2, 8])
def test_compiled_packed_layers_match_eager(bits, integer):
    """Under torch.compile packed layers keep the reference expression (inductor fuses the unpacking), and inside
    ``integer_matmul()`` a W{bits}A8 layer becomes the int8 GEMM: a compiled stack agrees with the eager reference
    path and with the eager kernels either way."""
    import contextlib

    import qsam2_ext
    from torch._inductor.utils import run_and_get_code
    from torchao.quantization import quantize_

    from qsam2_ext.kernels import cuda_kernels

    model = torch.nn.Sequential(torch.nn.Linear(K, 384), torch.nn.GELU(), torch.nn.Linear(384, N)).cuda().bfloat16()
    quantize_(model[0], qsam2_ext.qsam2_config(bits=bits, act_bits=8), filter_fn=None)
    quantize_(model[2], qsam2_ext.qsam2_config(bits=4), filter_fn=None)
    x = torch.randn(M, K, device="cuda").to(torch.bfloat16)
    with torch.inference_mode():
        kernels = model(x)
        with cuda_kernels(False):
            reference = model(x)
        torch._dynamo.reset()
        with qsam2_ext.integer_matmul(force=True) if integer else contextlib.nullcontext():
            compiled, code = run_and_get_code(torch.compile(model, dynamic=False), x)
    assert ("_int_mm" in "".join(code)) == integer
    assert relative_error(compiled, reference) < 1e-2
    assert relative_error(compiled, kernels) < 1e-2


def test_sam2_encoder_through_kernels_matches_reference_path():
    """A real SAM2.1 encoder (hiera_t at 256², bf16), W2A8 and W4A16: the kernels' path measured per shape against
    the package's reference dequantize-then-multiply path."""
    import qsam2_ext
    from torchao.quantization import quantize_

    from qsam2_ext.kernels import cuda_kernels
    from qsam2_ext.kernels.linear_op import PATHS, chosen_paths
    from qsam2_ext.sam2.models import build_model

    float_encoder = build_model("sam2.1_hiera_t", image_size=256, device="cuda").image_encoder.bfloat16().eval()
    images = torch.randn(2, 3, 256, 256, device="cuda").to(torch.bfloat16)
    for bits, act_bits in ((2, 8), (4, None)):
        encoder = build_model("sam2.1_hiera_t", image_size=256, device="cuda").image_encoder.bfloat16().eval()
        encoder.load_state_dict(float_encoder.state_dict())
        quantize_(encoder, qsam2_ext.qsam2_config(bits=bits, act_bits=act_bits),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear))
        with torch.inference_mode():
            fast = encoder(images)["vision_features"]
            with cuda_kernels(False):
                reference = encoder(images)["vision_features"]
        # rounding differences compound over 12 blocks (the CPU integer product gives 2.9 % on this model); a
        # wrong kernel gives errors of order one
        assert relative_error(fast, reference) < 0.1, (bits, act_bits)
    assert chosen_paths() and set(chosen_paths().values()) <= set(PATHS)


fp8_cards = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                               reason="needs FP8 tensor cores (compute capability 8.9 or later)")


@fp8_cards
@pytest.mark.parametrize("k", [144, 4608])  # hiera_l's narrowest and widest Linear inputs
def test_fp8_product_is_the_exact_integer_product(k):
    """4-bit codes in e4m3 through ``torch._scaled_mm``: every fp32 sum equals the integer product, bit for bit,
    extreme codes (all -8: the largest sums) included."""
    from qsam2_ext.kernels.fp8_linear import fp8_product

    a = torch.randint(-8, 8, (257, k), dtype=torch.int8, device="cuda")
    b = torch.randint(-8, 8, (208, k), dtype=torch.int8, device="cuda")
    a[:3] = -8
    b[:5] = -8
    exact = (a.cpu().long() @ b.cpu().long().t()).float()  # |sums| <= 64 K < 2**24: exact in float32
    assert torch.equal(fp8_product(a, b).cpu(), exact)
    assert exact.abs().max() == 64 * k


@fp8_cards
@pytest.mark.parametrize("bits", [2, 4])
def test_fp8_layer_agrees_bitwise_with_the_int8_reference(bits):
    """An A4 layer on FP8 tensor cores (path "fp8") gives the same bits as the integer reference (``int_linear``
    with cuBLASLt's int8 product) on the same codes and grids; the rowwise path differs by its bf16 product only."""
    from qsam2_ext.core import quantize_tokens
    from qsam2_ext.kernels.fp8_linear import scaled_product

    _, codes, center, step, _ = packed_weight(bits, 1, torch.bfloat16, n=208)  # FP8 GEMMs: N a multiple of 16
    a, xc, xs = quantize_tokens(torch.randn(M, K, device="cuda"), 4)
    bias = torch.randn(208, device="cuda")
    ref = int_linear(a, xc, xs, codes, center, step, bias)
    assert torch.equal(int_linear(a, xc, xs, codes, center, step, bias, product=scaled_product("fp8")), ref)
    rowwise = int_linear(a, xc, xs, codes, center, step, bias, product=scaled_product("fp8 rowwise"))
    main = (a.double() @ codes.double().t()) * xs.double() * step.double().t()
    assert (rowwise.double() - ref.double()).abs().max() <= 2 ** -8 * main.abs().max()


class _Parallel(torch.nn.Module):
    """Layers side by side, each on its own input: a layer's codes then depend on that input alone, so the compiled
    and the eager path quantize the same values (chained A4 layers would amplify bf16 rounding into code flips)."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, *xs):
        return [layer(x) for layer, x in zip(self.layers, xs)]


@fp8_cards
@pytest.mark.parametrize("path", ["fp8", "fp8 rowwise", "bf16", None])
def test_compiled_a4_layers_take_the_fp8_product(path):
    """Compiled inside ``integer_matmul()``, W2A4 / W4A4 layers trace ``torch._scaled_mm`` on their chosen path (or
    the measured one: ``None``) and agree with the eager reference path; W8A4 keeps the int8 GEMM."""
    import qsam2_ext
    from torch._inductor.utils import run_and_get_code
    from torchao.quantization import quantize_

    from qsam2_ext.kernels import cuda_kernels, fp8_linear

    model = _Parallel(torch.nn.Linear(K, 384), torch.nn.Linear(384, 208), torch.nn.Linear(208, 64)).cuda().bfloat16()
    for layer, bits in zip(model.layers, (2, 4, 8)):
        quantize_(layer, qsam2_ext.qsam2_config(bits=bits, act_bits=4), filter_fn=None)
    xs = [torch.randn(M, k, device="cuda").to(torch.bfloat16) for k in (K, 384, 208)]
    with torch.inference_mode():
        with cuda_kernels(False):
            reference = model(*xs)
        torch._dynamo.reset()
        with qsam2_ext.integer_matmul(force=True), fp8_linear.force_path(path):
            compiled, code = run_and_get_code(torch.compile(model, dynamic=False), *xs)
    chosen = [path] * 2 if path else [fp8_linear.chosen_paths()[(0, M, K, 384)],
                                      fp8_linear.chosen_paths()[(0, M, 384, 208)]]
    assert set(chosen) <= set(fp8_linear.PATHS)
    assert ("_scaled_mm" in "".join(code)) == any(p != "bf16" for p in chosen)
    assert "_int_mm" in "".join(code)  # the W8A4 layer: 8-bit codes are not exact in e4m3
    for out, ref in zip(compiled, reference):  # the same codes: bf16 rounding of the reference's operands only
        assert relative_error(out, ref) < 1e-2
