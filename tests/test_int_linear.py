"""The integer product (``qsam2_ext.core.int_linear``) against a float64 NumPy reference of the dequantized
layer, and the packed weight's CPU integer path against its own reference path."""

import numpy as np
import pytest
import torch
from torch import nn
from torchao.quantization import quantize_

import qsam2_ext
from qsam2_ext import qsam2_config
from qsam2_ext.core import code_range, cpu_int8, int8_product, int_linear, quantize_tokens
from qsam2_ext.core.cpu_int8 import U8S8_MAX_WEIGHT_BITS, u8s8_cpu


def _np_linear(codes, center, step, w_codes, w_center, w_step, bias):
    x = (codes.astype(np.float64) + 0.5) * step + center
    w = (w_codes.astype(np.float64) + 0.5) * w_step + w_center
    return x @ w.T + bias


@pytest.mark.parametrize("w_bits,a_bits,k", [(8, 8, 64), (2, 8, 200), (4, 4, 37), (3, 8, 1152)])
def test_int_linear_equals_the_dequantized_product(w_bits, a_bits, k):
    g = torch.Generator().manual_seed(k)
    (wlo, whi), (alo, ahi) = code_range(w_bits), code_range(a_bits)
    codes = torch.randint(alo, ahi + 1, (50, k), generator=g, dtype=torch.int8)
    w_codes = torch.randint(wlo, whi + 1, (24, k), generator=g, dtype=torch.int8)
    center, step = torch.randn(50, 1, generator=g), torch.rand(50, 1, generator=g) + 0.01
    w_center, w_step = torch.randn(24, 1, generator=g) * 0.1, torch.rand(24, 1, generator=g) * 0.05 + 1e-3
    bias = torch.randn(24, generator=g)
    got = int_linear(codes, center, step, w_codes, w_center, w_step, bias, w_bits).double().numpy()
    want = _np_linear(*(t.numpy() for t in (codes, center, step, w_codes, w_center, w_step, bias)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


def _extreme_codes(bits, shape, g):
    """Codes at the ends of the b-bit range (and some in between): the products a kernel could overflow on."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1  # any width up to 8 (the kernel's bound is 7 bits)
    ends = torch.tensor([lo, hi], dtype=torch.int8)[torch.randint(0, 2, shape, generator=g)]
    middle = torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8)
    return torch.where(torch.rand(shape, generator=g) < 0.8, ends, middle)


@pytest.mark.parametrize("w_bits", [2, 3, 4, 8])
def test_int8_product_is_the_exact_integer_product(w_bits):
    """Whichever kernel it picks here (oneDNN's u8 x s8 matmul for <= 7-bit weights on CPUs without VNNI), the
    product equals an int64 matmul, for codes at the ends of their ranges too."""
    g = torch.Generator().manual_seed(w_bits)
    codes, w_codes = _extreme_codes(8, (33, 1152), g), _extreme_codes(w_bits, (40, 1152), g)
    want = (codes.long() @ w_codes.long().t()).float()  # |sum| < 2**24 here: float32 holds it exactly
    assert torch.equal(int8_product(codes, w_codes, w_bits), want)


@pytest.mark.skipif(not u8s8_cpu(), reason="oneDNN's u8 x s8 matmul needs an x86 CPU with AVX2")
@pytest.mark.parametrize("w_bits", [2, 4, U8S8_MAX_WEIGHT_BITS])
def test_u8s8_product_is_exact_up_to_seven_bit_weights(w_bits):
    """The oneDNN kernel itself, on the worst case for its int16 pair sums (u8 255 against the widest weights)."""
    g = torch.Generator().manual_seed(0)
    codes = torch.full((16, 256), 127, dtype=torch.int8)
    codes[1::2] = _extreme_codes(8, (8, 256), g)
    w_codes = _extreme_codes(w_bits, (24, 256), g)
    want = (codes.long() @ w_codes.long().t()).float()
    assert torch.equal(torch.ops.qsam2.u8s8_product(codes, w_codes), want)


def test_token_codes_reproduce_the_per_token_fake_quantizer():
    from qsam2_ext.core.grid import dequantize, fake_quantize_per_token

    x = torch.randn(7, 33) * torch.linspace(0.1, 10, 7)[:, None]
    codes, center, step = quantize_tokens(x, 8)
    assert codes.dtype == torch.int8 and center.shape == step.shape == (7, 1)
    assert torch.equal(dequantize(codes, center, step), fake_quantize_per_token(x, 8))


def _converted(bits, act_bits, static, group_size=None, act_per_channel=False):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 32))  # the integer product takes >= 128 inputs
    x = torch.randn(4, 10, 128)
    if static:  # QAT flow: the learned static input grid
        options = dict(bits=bits, act_bits=act_bits, group_size=group_size, act_per_channel=act_per_channel)
        quantize_(net, qsam2_config(step="prepare", **options))
        with qsam2_ext.core.observing(net), torch.no_grad():
            net(x)
        quantize_(net, qsam2_config(step="convert", **options))
    else:  # one-shot: dynamic per-token inputs
        quantize_(net, qsam2_config(bits=bits, act_bits=act_bits, group_size=group_size))
    return net, x


@pytest.mark.parametrize("bits,act_bits,static", [(8, 8, False), (2, 8, False), (2, 8, True), (4, 4, True)])
def test_packed_linear_integer_path_matches_the_reference_path(bits, act_bits, static):
    net, x = _converted(bits, act_bits, static)
    layer = net[0]
    by_hand = _by_hand(layer, x, act_bits)
    with torch.no_grad():
        reference = layer(x)
        with qsam2_ext.integer_matmul(force=True):  # on any CPU, fast int8 GEMM or not
            integer = layer(x)
    assert torch.equal(integer, by_hand)  # the integer path ran
    # one layer equals the reference up to float rounding (a next layer may round its input differently)
    torch.testing.assert_close(integer, reference, rtol=1e-5, atol=1e-5)


def test_layers_with_few_inputs_keep_the_reference_path():
    """Below INTEGER_MIN_INPUTS the float product is faster on CPUs (the 96-input layer here)."""
    from qsam2_ext.integrations.torchao.packed_tensor import INTEGER_MIN_INPUTS

    net, x = _converted(8, 8, False)
    assert net[2].in_features < INTEGER_MIN_INPUTS <= net[0].in_features
    hidden = net[1](net[0](x))
    with torch.no_grad():
        reference = net[2](hidden)
        with qsam2_ext.integer_matmul(force=True):  # on any CPU, fast int8 GEMM or not
            assert torch.equal(net[2](hidden), reference)


@pytest.mark.parametrize("options", [dict(group_size=32), dict(act_per_channel=True)])
def test_grids_that_do_not_factor_use_the_reference_path(options):
    net, x = _converted(2, 8, True, **options)
    with torch.no_grad():
        reference = net(x)
        with qsam2_ext.integer_matmul(force=True):  # on any CPU, fast int8 GEMM or not
            assert torch.equal(net(x), reference)


def test_fast_int8_cpu_reads_the_cpus_own_flags():
    """torch's probes against the kernel's list of CPU features (Linux), an independent reading."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    assert qsam2_ext.fast_int8_cpu() == bool({"avx512_vnni", "amx_int8", "amx_tile"} & set(flags))


def test_cpus_without_a_fast_int8_gemm_keep_the_float_product(monkeypatch):
    """Where torch's int8 GEMM is a plain loop and oneDNN's u8 x s8 matmul is missing too, integer_matmul() warns and
    changes nothing; force=True still runs the integer product."""
    monkeypatch.setattr(cpu_int8, "fast_int8_cpu", lambda: False)
    monkeypatch.setattr(cpu_int8, "u8s8_cpu", lambda: False)
    net, x = _converted(2, 8, False)
    with torch.no_grad():
        reference = net[0](x)
        with pytest.warns(UserWarning, match="AVX512-VNNI nor AMX.*packed layers keep"), qsam2_ext.integer_matmul():
            assert torch.equal(net[0](x), reference)
        with qsam2_ext.integer_matmul(force=True):
            forced = net[0](x)
    assert torch.equal(forced, _by_hand(net[0], x))


@pytest.mark.skipif(not u8s8_cpu(), reason="oneDNN's u8 x s8 matmul needs an x86 CPU with AVX2")
def test_without_vnni_low_bit_weights_take_the_u8s8_product_and_8_bit_weights_the_float_one(monkeypatch):
    from qsam2_ext.kernels import cpu_linear

    monkeypatch.setattr(cpu_int8, "fast_int8_cpu", lambda: False)  # what an AVX2-only CPU reports
    w2, x = _converted(2, 8, False)
    w8, _ = _converted(8, 8, False)
    with torch.no_grad():
        reference8 = w8[0](x)
        with pytest.warns(UserWarning, match="2-4-bit weights multiply codes"), qsam2_ext.integer_matmul(), \
                cpu_linear.cpu_paths("integer"):  # pinned: unpinned, the eager path measures the exact ones too
            integer2, float8 = w2[0](x), w8[0](x)
    assert torch.equal(integer2, _by_hand(w2[0], x))
    assert torch.equal(float8, reference8)


@pytest.mark.skipif(not u8s8_cpu(), reason="oneDNN's u8 x s8 matmul needs an x86 CPU with AVX2")
def test_compiled_integer_path_keeps_the_u8s8_product_whole(monkeypatch):
    """Inductor's own lowering of oneDNN's matmul wants a constant prepacked weight; ours is an opaque op."""
    monkeypatch.setattr(cpu_int8, "fast_int8_cpu", lambda: False)
    net, x = _converted(2, 8, False)
    with torch.no_grad(), qsam2_ext.integer_matmul(force=True):
        eager = net(x)
        torch._dynamo.reset()
        compiled = torch.compile(net)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_a_compiled_model_follows_integer_matmul_in_and_out():
    """Which expression a layer traces is part of its compiled graph's key: leaving ``integer_matmul()`` recompiles
    (dynamo's guards) instead of reusing the integer graph, here or from compile caches (torch 2.11's AOT autograd
    cache once returned it)."""
    from torch._inductor.utils import run_and_get_code

    net, x = _converted(2, 8, False)
    compiled = torch.compile(net)
    torch._dynamo.reset()
    with torch.no_grad():
        with qsam2_ext.integer_matmul(force=True):
            integer, code = run_and_get_code(compiled, x)
        assert "u8s8_product" in "".join(code) or "_int_mm" in "".join(code)
        reference, code = run_and_get_code(compiled, x)
        assert code and "u8s8_product" not in "".join(code) and "_int_mm" not in "".join(code)
        with qsam2_ext.integer_matmul(force=True):
            assert torch.equal(compiled(x), integer)
    torch.testing.assert_close(integer, reference, rtol=1e-4, atol=1e-4)


def _traced_on_cuda(bits, act_bits, m=300, k=96, n=64, groups=1, static=False):
    """The ATen ops of one packed Linear traced on fake CUDA tensors (no GPU needed), as torch.compile sees it."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn import functional as F

    from qsam2_ext.integrations.torchao import QSAM2PackedTensor

    with FakeTensorMode():
        grid = [torch.empty(n, groups, device="cuda") for _ in range(2)]
        act_grid = [torch.empty((), device="cuda") for _ in range(2)] if static else [None, None]
        packed = torch.empty(n, k * bits // 8, dtype=torch.uint8, device="cuda")
        weight = QSAM2PackedTensor(packed, *grid, bits, (n, k), torch.bfloat16, *act_grid, act_bits)
        x = torch.empty(m, k, dtype=torch.bfloat16, device="cuda")
        with torch.no_grad():
            graph = make_fx(F.linear)(x, weight)
    return {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}


@pytest.mark.parametrize("bits,static", [(8, False), (2, False), (2, True)])
def test_compiled_cuda_layers_with_quantized_inputs_take_the_int8_gemm_inside_integer_matmul(bits, static):
    """Traced for torch.compile on CUDA, W8A8 / W2A8 layers become one int8 GEMM (cuBLASLt's ``_int_mm``) inside
    ``integer_matmul()``, and keep the dequantize expression feeding cuBLAS outside it."""
    with qsam2_ext.integer_matmul(force=True):  # force: no warning about this CPU's own int8 GEMM
        assert "aten._int_mm.default" in _traced_on_cuda(bits, 8, static=static)
    ops = _traced_on_cuda(bits, 8, static=static)
    assert "aten._int_mm.default" not in ops and "aten.mm.default" in ops


@pytest.mark.parametrize("case", [
    dict(bits=2, act_bits=None),        # float inputs: the dequantize expression feeding cuBLAS
    dict(bits=2, act_bits=8, groups=3),  # grouped weight grids do not factor out of the sum
    dict(bits=8, act_bits=8, m=16),      # cuBLASLt's int8 GEMM wants more than 16 rows ...
    dict(bits=8, act_bits=8, k=100),     # ... and inner and output sizes multiples of 8
    dict(bits=8, act_bits=8, n=60),
])
def test_compiled_cuda_layers_the_int8_gemm_cannot_take_keep_the_reference(case):
    with qsam2_ext.integer_matmul(force=True):
        ops = _traced_on_cuda(**case)
    assert "aten._int_mm.default" not in ops and "aten.mm.default" in ops


def test_cuda_kernels_off_keeps_compiled_layers_on_the_reference():
    from qsam2_ext.kernels import cuda_kernels

    with cuda_kernels(False), qsam2_ext.integer_matmul(force=True):
        ops = _traced_on_cuda(8, 8)
    assert "aten._int_mm.default" not in ops and "aten.mm.default" in ops


def _by_hand(layer, x, act_bits=8):
    """The layer's integer product computed here: inputs on its static grid, or per token."""
    w, rows = layer.weight, x.reshape(-1, x.shape[-1])
    if w.act_center is not None:
        center, step = w.act_center.float(), w.act_step.float()
        codes = qsam2_ext.core.quantize(rows, center, step, act_bits)
    else:
        codes, center, step = quantize_tokens(rows, act_bits)
    return int_linear(codes, center, step, w.codes(), w.center, w.step, layer.bias).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("bits", [2, 4])
def test_compiled_cuda_a4_layers_take_the_fp8_product_on_their_chosen_path(bits):
    """Traced for torch.compile on CUDA inside ``integer_matmul()``, W2A4 / W4A4 layers become one FP8 GEMM
    (``torch._scaled_mm``) on the "fp8" paths, and the dequantize expression on "bf16" (what a GPU without FP8
    tensor cores measures); 8-bit weights, not exact in e4m3, keep the int8 GEMM."""
    from qsam2_ext.kernels import fp8_linear

    with qsam2_ext.integer_matmul(force=True):
        for path in ("fp8", "fp8 rowwise"):
            with fp8_linear.force_path(path):
                ops = _traced_on_cuda(bits, 4)
            assert "aten._scaled_mm.default" in ops and "aten.mm.default" not in ops
        with fp8_linear.force_path("bf16"):
            ops = _traced_on_cuda(bits, 4)
        assert "aten._scaled_mm.default" not in ops and "aten.mm.default" in ops
        with fp8_linear.force_path("fp8"):
            assert "aten._int_mm.default" in _traced_on_cuda(8, 4)
            assert "aten._scaled_mm.default" not in _traced_on_cuda(bits, 4, k=104)  # K not a multiple of 16


@pytest.mark.parametrize("bits,act_bits", [(2, None), (2, 8), (4, 4)])
def test_default_cpu_path_is_measured_per_kind_of_layer_and_gives_the_reference_bits(bits, act_bits):
    """Eager on a CPU, each kind of packed layer times its two exact paths (weight dequantized once and kept, or per
    call) on its first input and keeps the faster; the output has the reference path's bits either way, and the
    model says which path each layer ran, per kind of layer."""
    from qsam2_ext.kernels import cpu_linear

    net, x = _converted(bits, act_bits, False)
    with torch.no_grad():
        with cpu_linear.cpu_paths("reference"):
            reference = net(x)
        measured = net(x)
        for path in cpu_linear.EXACT_PATHS:
            with cpu_linear.cpu_paths(path):
                assert torch.equal(net(x), reference), path
            assert cpu_linear.paths_taken(net) == {path: 2}
        again = net(x)
    assert torch.equal(measured, reference) and torch.equal(again, reference)
    assert set(cpu_linear.paths_taken(net)) <= set(cpu_linear.EXACT_PATHS)
    kinds = cpu_linear.kinds_taken(net)
    assert sorted(k["weight"] for k in kinds) == [[32, 96], [96, 128]]
    first = next(k for k in kinds if k["weight"] == [96, 128])
    assert first["input"] == list(x.shape) and first["layers"] == 1
    assert set(first["ms"]) == set(cpu_linear.EXACT_PATHS)


@pytest.mark.parametrize("bits,act_bits", [(2, None), (2, 8), (4, 4)])
def test_inside_integer_matmul_the_cpu_path_is_measured_with_the_integer_product(bits, act_bits):
    """Inside ``integer_matmul()``, a Linear with factoring grids on a CPU with a fast int8 kernel also times the
    integer product and keeps it where it is clearly faster; the output equals the reference up to float rounding, and
    pinned to "integer" it is the by-hand integer product."""
    from qsam2_ext.kernels import cpu_linear

    net, x = _converted(bits, act_bits, False)
    integer = act_bits is not None and cpu_int8.fast_int8_product(bits)  # net[0] has 128 inputs, net[2] 96
    with torch.no_grad():
        with cpu_linear.cpu_paths("reference"):
            reference, first = net(x), net[0](x)
        with qsam2_ext.integer_matmul():
            measured = net(x)
            taken, kinds = cpu_linear.paths_taken(net), cpu_linear.kinds_taken(net)
            with cpu_linear.cpu_paths("integer"):
                forced = net[0](x)
    torch.testing.assert_close(measured, reference, rtol=1e-5, atol=1e-5)
    assert sum(taken.values()) == 2 and (integer or "integer" not in taken)
    assert cpu_linear.paths_taken(net[:1]) == {"integer" if integer else "reference": 1}
    assert torch.equal(forced, _by_hand(net[0], x, act_bits) if integer else first)
    first_kind = next(k for k in kinds if k["weight"] == [96, 128])
    assert set(first_kind["ms"]) == set(cpu_linear.PATHS if integer else cpu_linear.EXACT_PATHS)
    assert next(k for k in cpu_linear.kinds_taken(net) if k["weight"] == [96, 128])["ms"] == {}  # pinned: no timing


def test_the_cached_weight_lives_beside_the_packed_tensor_not_in_it(tmp_path):
    """The cached dequantized weight is released with its layer's weight and never saved with it."""
    import gc
    import weakref

    from qsam2_ext.kernels import cpu_linear

    net, x = _converted(2, None, False)
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    torch.save(net.state_dict(), tmp_path / "before" / "net.pt")
    with torch.no_grad(), cpu_linear.cpu_paths("cached"):
        net(x)
    dense = weakref.ref(cpu_linear.state(net[0].weight)["dense"])
    assert dense() is not None and torch.equal(dense(), net[0].weight.dequantize())
    torch.save(net.state_dict(), tmp_path / "after" / "net.pt")
    assert (tmp_path / "after" / "net.pt").read_bytes() == (tmp_path / "before" / "net.pt").read_bytes()
    with torch.no_grad(), cpu_linear.cpu_paths("reference"):
        net(x)
    gc.collect()
    assert dense() is None
