"""The integer product (``qsam2_ext.core.int_linear``) against a float64 NumPy reference of the dequantized
layer, and the packed weight's CPU integer path against its own reference path."""

import numpy as np
import pytest
import torch
from torch import nn
from torchao.quantization import quantize_

import qsam2_ext
from qsam2_ext import qsam2_config
from qsam2_ext.core import code_range, int_linear, quantize_tokens


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
    got = int_linear(codes, center, step, w_codes, w_center, w_step, bias).double().numpy()
    want = _np_linear(*(t.numpy() for t in (codes, center, step, w_codes, w_center, w_step, bias)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


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
    layer, w = net[0], net[0].weight
    rows = x.reshape(-1, 128)
    if static:
        center, step = w.act_center.float(), w.act_step.float()
        codes = qsam2_ext.core.quantize(rows, center, step, act_bits)
    else:
        codes, center, step = quantize_tokens(rows, act_bits)
    by_hand = int_linear(codes, center, step, w.codes(), w.center, w.step, layer.bias).reshape(4, 10, -1)
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
    """Where torch's int8 GEMM is a plain loop, integer_matmul() warns and changes nothing; force=True still runs the
    integer product."""
    from qsam2_ext.integrations.torchao import packed_tensor

    monkeypatch.setattr(packed_tensor, "fast_int8_cpu", lambda: False)
    net, x = _converted(8, 8, False)
    with torch.no_grad():
        reference = net[0](x)
        with pytest.warns(UserWarning, match="AVX512-VNNI nor AMX"), qsam2_ext.integer_matmul():
            assert torch.equal(net[0](x), reference)
        with qsam2_ext.integer_matmul(force=True):
            forced = net[0](x)
    codes, center, step = quantize_tokens(x.reshape(-1, 128), 8)
    w = net[0].weight
    by_hand = int_linear(codes, center, step, w.codes(), w.center, w.step, net[0].bias).reshape(forced.shape)
    assert torch.equal(forced, by_hand)
