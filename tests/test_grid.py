import numpy as np
import pytest
import torch

from conftest import np_qdq
from qsam2_ext.core import center_step, code_range, dequantize, fake_quantize, quantize
from qsam2_ext.core.grid import fake_quantize_per_token


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("ste", ["clip", "round"])
def test_fake_quantize_matches_numpy(bits, ste):
    x = torch.randn(64, 33, dtype=torch.float64) * 2
    center = torch.randn(64, 1, dtype=torch.float64) * 0.3
    half = torch.rand(64, 1, dtype=torch.float64) + 0.5
    ref, k, _ = np_qdq(x.numpy(), center.numpy(), half.numpy(), bits)
    lo, hi = center - half, center + half
    out = fake_quantize(x, lo, hi, bits, ste=ste)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)
    c, s = center_step(lo, hi, bits)
    codes = quantize(x, c, s, bits)
    np.testing.assert_array_equal(codes.numpy(), k)
    assert torch.equal(dequantize(codes, c, s), fake_quantize(x, lo, hi, bits))  # bit-exact


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_grid_has_2b_symmetric_levels_with_extremes_at_clip_bounds(bits):
    lo, hi = torch.tensor(-1.25, dtype=torch.float64), torch.tensor(1.75, dtype=torch.float64)
    x = torch.linspace(-10, 10, 200001, dtype=torch.float64)
    levels = torch.unique(fake_quantize(x, lo, hi, bits))
    assert len(levels) == 2**bits
    assert torch.isclose(levels.min(), lo) and torch.isclose(levels.max(), hi)
    center, step = center_step(lo, hi, bits)
    np.testing.assert_allclose((levels - center).numpy(), -(levels - center).flip(0).numpy(), atol=1e-12)
    assert torch.allclose(levels.diff(), step.expand(len(levels) - 1))
    assert code_range(bits) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def test_clip_ste_gradients_are_pact_style():
    x = torch.tensor([-3.0, -1.0, -0.1, 0.4, 1.0, 2.5, 7.0], dtype=torch.float64, requires_grad=True)
    lo = torch.full_like(x, -1.0, requires_grad=True)
    hi = torch.full_like(x, 1.0, requires_grad=True)
    up = torch.arange(1.0, 8.0, dtype=torch.float64)  # distinct upstream gradients
    (fake_quantize(x, lo, hi, 2, ste="clip") * up).sum().backward()
    xv, upv = x.detach().numpy(), up.numpy()
    np.testing.assert_array_equal(x.grad.numpy(), np.where((xv >= -1) & (xv <= 1), upv, 0.0))  # bounds inclusive
    np.testing.assert_array_equal(hi.grad.numpy(), np.where(xv > 1, upv, 0.0))
    np.testing.assert_array_equal(lo.grad.numpy(), np.where(xv < -1, upv, 0.0))


@pytest.mark.parametrize("bits", [2, 4])
def test_round_ste_with_lsq_range_gives_lsq_gradient(bits):
    qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    x = torch.randn(200, dtype=torch.float64) * 3
    s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    out = fake_quantize(x, -qn * s, qp * s, bits, ste="round")
    v = x.numpy() / 0.7
    np.testing.assert_allclose(out.detach().numpy(), np.clip(np.floor(v + 0.5), -qn, qp) * 0.7, atol=1e-12)
    out.sum().backward()
    per = np.where(v <= -qn, -qn, np.where(v >= qp, qp, np.floor(v + 0.5) - v))  # LSQ, Esser et al. eq. 3
    np.testing.assert_allclose(s.grad.item(), per.sum(), rtol=1e-10)


@pytest.mark.parametrize("bad", [1, 5, 16, 2.0, True, "2"])
def test_unsupported_bits_rejected(bad):
    with pytest.raises(ValueError, match="bits"):
        fake_quantize(torch.zeros(3), -torch.ones(()), torch.ones(()), bad)


@pytest.mark.parametrize("shape, dim", [((6, 2304), -1), ((2, 1152, 3, 3), 1), ((4, 1031), -1), ((5, 576), -1),
                                        ((2, 3, 4608), 2), ((3, 2048), 0)])
def test_row_extrema_equal_numpys_min_and_max_for_rows_long_and_short(shape, dim):
    from qsam2_ext.core.grid import row_extrema

    x = torch.randn(shape) * 3
    x.view(-1)[7] = -50.0  # one extreme value, in whichever chunk it lands
    lo, hi = row_extrema(x, dim)
    np.testing.assert_array_equal(lo.numpy(), x.numpy().min(axis=dim, keepdims=True))
    np.testing.assert_array_equal(hi.numpy(), x.numpy().max(axis=dim, keepdims=True))


def test_compiled_per_token_quantization_of_a_long_row_equals_eager():
    """Rows longer than REGISTER_ROW trace a two-step min/max: compiled (fullgraph) it keeps eager's grid."""
    from qsam2_ext.core.grid import fake_quantize_per_token

    x = torch.randn(64, 2304) * 3
    x[:, 1000] = 40.0  # every row's max in one chunk, its min anywhere
    compiled = torch.compile(fake_quantize_per_token, fullgraph=True, dynamic=False)
    out = compiled(x, 8)
    ref = fake_quantize_per_token(x, 8)
    step = (ref.amax(-1, keepdim=True) - ref.amin(-1, keepdim=True)) / 255  # outermost levels: 255 steps apart
    # the same grid; a code may differ by one step where inductor's division rounds differently from eager's
    assert ((out - ref).abs() <= step * 1.001).all()
    assert (out == ref).float().mean() > 0.99


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_constant_tokens_come_back_without_subnormal_values(bits, dtype):
    """A constant token (a zero-padded window) keeps its value, and no output, step or center is subnormal: CPU GEMMs
    fed subnormal inputs run several times slower."""
    from qsam2_ext.core.grid import token_grid

    x = torch.tensor([[0.0] * 6, [3.0] * 6, [-1e-30] * 6, [0.0, 1.0, -2.0, 0.5, 0.25, 1.5]]).to(dtype)
    out = fake_quantize_per_token(x.float(), bits).to(dtype)
    tiny = torch.finfo(torch.float32).tiny

    def subnormal(t):
        t = t.float()
        return bool(((t != 0) & (t.abs() < tiny)).any())

    center, step = token_grid(x.float(), bits)
    assert not subnormal(out) and not subnormal(center) and not subnormal(step)
    assert (step[0] > 0) and not out.isnan().any()  # a nonzero constant's step may round to 0: it is its center
    assert float(out[0].abs().max()) <= 2.0**-64  # a zero token: zero up to the grid's rounding
    assert torch.equal(out[1], x[1])               # a nonzero constant token: exactly itself
    ref = fake_quantize_per_token(x[3:].double(), bits)  # a real token: the grid of its own min..max
    assert torch.allclose(out[3].double(), ref[0], atol=1e-6 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_one_buffer_quantize_dequantize_gives_the_two_step_bits(bits):
    """The eager one-buffer chain equals dequantize(quantize(...)) bit for bit, clipped values and ties included."""
    from qsam2_ext.core.grid import quantize_dequantize, token_grid

    x = torch.randn(64, 48) * 3
    x[0, :4] = torch.tensor([100.0, -100.0, 0.0, 0.5])
    center, step = token_grid(x, bits)
    x[1] = center[1] + step[1] * torch.arange(-8, 40).float()  # ties on the grid's boundaries
    assert torch.equal(quantize_dequantize(x, center, step, bits), dequantize(quantize(x, center, step, bits), center, step))
    c, s = torch.tensor(0.1), torch.tensor(0.37)  # a static per-tensor grid
    assert torch.equal(quantize_dequantize(x, c, s, bits), dequantize(quantize(x, c, s, bits), c, s))
    k = torch.full((3, 5), 2.5)  # constant tokens: a zero step, every level the center
    kc, ks = token_grid(k, bits)
    assert torch.equal(quantize_dequantize(k, kc, ks, bits), dequantize(quantize(k, kc, ks, bits), kc, ks))
    assert torch.equal(quantize_dequantize(k, kc, ks, bits), k)
