import math

import numpy as np
import pytest
import torch

from conftest import np_qdq
from qsam2_ext.core import (
    ActivationGranularity,
    LSCQuantizer,
    LSQQuantizer,
    MinMaxQuantizer,
    PACTQuantizer,
    WeightGranularity,
    make_quantizer,
    observing,
)


def _weight(out=16, inp=48):
    return torch.randn(out, inp) * 0.05 + torch.randn(out, 1) * 0.01


# ---------------------------------------------------------------- LSC
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, 16])
def test_lsc_weight_forward_matches_numpy(bits, group_size):
    w = _weight()
    q = LSCQuantizer(bits, WeightGranularity.for_weight(w, group_size), alpha_init=1.7)
    wn = w.double().numpy().reshape(16, -1, group_size or 48)
    mu, sigma = wn.mean(-1, keepdims=True), wn.std(-1, keepdims=True)
    ref, _, _ = np_qdq(wn, mu, 1.7 * sigma, bits)
    np.testing.assert_allclose(q(w).detach().numpy(), ref.reshape(16, 48), atol=1e-6)


def test_lsc_gradients_match_reference_and_finite_differences():
    w = _weight().double()
    g = WeightGranularity.for_weight(w)
    q = LSCQuantizer(2, g, alpha_init=1.2).double()
    w.requires_grad_(True)
    up = torch.randn_like(w)
    (q(w) * up).sum().backward()
    wn, upn = w.detach().numpy(), up.numpy()
    mu, sigma = wn.mean(1, keepdims=True), wn.std(1, keepdims=True)
    hi, lo = mu + 1.2 * sigma, mu - 1.2 * sigma
    np.testing.assert_allclose(w.grad.numpy(), np.where((wn >= lo) & (wn <= hi), upn, 0.0), atol=1e-12)
    alpha_ref = (upn * np.where(wn > hi, sigma, np.where(wn < lo, -sigma, 0.0))).sum(1)
    np.testing.assert_allclose(q.alpha.grad.numpy().ravel(), alpha_ref, rtol=1e-9, atol=1e-12)

    # The PACT-style alpha gradient is the exact derivative of the (continuous) clip the grid is tied to.
    def clipped_loss(alpha):
        a = alpha[:, None]
        return float((upn * np.clip(wn, mu - a * sigma, mu + a * sigma)).sum())

    eps = 1e-6
    fd = np.array([
        (clipped_loss(np.where(np.arange(16) == i, 1.2 + eps, 1.2)) - clipped_loss(np.where(np.arange(16) == i, 1.2 - eps, 1.2)))
        / (2 * eps)
        for i in range(16)
    ])
    np.testing.assert_allclose(q.alpha.grad.numpy().ravel(), fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("channels", [None, 8])
def test_lsc_activation_ema_follows_momentum_rule_and_freezes_in_eval(channels):
    g = ActivationGranularity(channels=channels, channel_dim=-1)
    q = LSCQuantizer(4, g, alpha_init=2.0, momentum=0.8)
    axes = (0, 1) if channels else None
    mean_ref = std_ref = None
    for i in range(4):
        x = torch.randn(3, 10, 8) * (1 + i) + i
        q.train()(x)
        m, s = x.double().numpy().mean(axis=axes), x.double().numpy().std(axis=axes)
        mean_ref = m if mean_ref is None else 0.8 * mean_ref + 0.2 * m
        std_ref = s if std_ref is None else 0.8 * std_ref + 0.2 * s
        np.testing.assert_allclose(q.running_mean.numpy(), mean_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(q.running_std.numpy(), std_ref, rtol=1e-5, atol=1e-6)
    q.eval()
    frozen = (q.running_mean.clone(), q.running_std.clone(), int(q.num_batches))
    x = torch.randn(3, 10, 8) * 5
    y = q(x)
    assert torch.equal(q.running_mean, frozen[0]) and torch.equal(q.running_std, frozen[1])
    assert int(q.num_batches) == frozen[2]
    # eval output is quantized with the frozen statistics (the quantizer stays active in eval)
    ref, _, _ = np_qdq(x.double().numpy(), frozen[0].double().numpy(), 2.0 * frozen[1].double().numpy(), 4)
    np.testing.assert_allclose(y.detach().numpy(), ref, atol=1e-5)
    assert len(torch.unique(y)) <= 16 * (channels or 1)


def test_observing_updates_statistics_without_train_mode():
    q = LSCQuantizer(8, ActivationGranularity()).eval()
    with pytest.raises(RuntimeError, match="no activation statistics"):
        q(torch.randn(4, 4))
    model = torch.nn.Sequential(q)
    with observing(model):
        model(torch.randn(4, 4))
    assert int(q.num_batches) == 1 and not q.observing
    q(torch.randn(4, 4))  # now usable in eval


def test_encode_decode_reproduces_forward_exactly():
    for cls in (LSCQuantizer, MinMaxQuantizer, PACTQuantizer, LSQQuantizer):
        w = _weight()
        q = cls(3, WeightGranularity.for_weight(w, 16))
        y = q(w)
        codes, center, step = q.encode(w)
        assert codes.dtype == torch.int8 and codes.shape == w.shape
        assert center.shape == step.shape == (16, 3)
        assert torch.equal(q.decode(codes, center, step), y), cls


# ---------------------------------------------------------------- baselines
def test_minmax_weights_span_min_to_max():
    w = _weight()
    q = MinMaxQuantizer(3, WeightGranularity.for_weight(w))
    wn = w.double().numpy()
    lo, hi = wn.min(1, keepdims=True), wn.max(1, keepdims=True)
    ref, _, _ = np_qdq(wn, (lo + hi) / 2, (hi - lo) / 2, 3)
    np.testing.assert_allclose(q(w).detach().numpy(), ref, atol=1e-6)
    w.requires_grad_(True)
    q(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # plain STE: nothing lies outside [min, max]


def test_minmax_activation_ema():
    q = MinMaxQuantizer(8, ActivationGranularity(), momentum=0.5).train()
    xs = [torch.randn(5, 6) * k for k in (1.0, 3.0)]
    for x in xs:
        q(x)
    assert math.isclose(float(q.running_min), 0.5 * float(xs[0].min()) + 0.5 * float(xs[1].min()), rel_tol=1e-6)
    assert math.isclose(float(q.running_max), 0.5 * float(xs[0].max()) + 0.5 * float(xs[1].max()), rel_tol=1e-6)


def test_pact_initialises_at_abs_max_and_learns_through_clip():
    x = torch.tensor([[-2.0, -0.5, 0.3, 1.0]])
    q = PACTQuantizer(2, ActivationGranularity()).train()
    y = q(x)
    assert float(q.alpha.detach()) == 2.0
    ref, _, _ = np_qdq(x.numpy(), 0.0, 2.0, 2)
    np.testing.assert_allclose(y.detach().numpy(), ref, atol=1e-6)
    with torch.no_grad():
        q.alpha.fill_(0.8)
    xr = x.clone().requires_grad_(True)
    up = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    (q(xr) * up).sum().backward()
    assert float(q.alpha.grad) == pytest.approx(-1.0 + 4.0)  # -1 per value below -alpha, +1 per value above
    assert xr.grad.tolist() == [[0.0, 2.0, 3.0, 0.0]]


def test_lsq_init_forward_and_scaled_gradient():
    w = _weight(4, 64)
    q = LSQQuantizer(4, WeightGranularity.for_weight(w))
    wr = w.clone().requires_grad_(True)
    y = q(wr)
    s0 = 2 * w.abs().mean(1) / math.sqrt(7)
    np.testing.assert_allclose(q.step.detach().numpy().ravel(), s0.numpy(), rtol=1e-6)
    v = (w / s0[:, None]).double().numpy()
    np.testing.assert_allclose(y.detach().numpy(), np.clip(np.floor(v + 0.5), -8, 7) * s0[:, None].numpy(), atol=1e-6)
    y.sum().backward()
    per = np.where(v <= -8, -8, np.where(v >= 7, 7, np.floor(v + 0.5) - v))
    g = 1 / math.sqrt(64 * 7)
    np.testing.assert_allclose(q.step.grad.numpy().ravel(), per.sum(1) * g, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bits", [1, 5, 6, 16, 0])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        make_quantizer("lsc", bits, ActivationGranularity())


def test_bad_options():
    with pytest.raises(ValueError, match="unknown quantization method"):
        make_quantizer("adaround", 2, ActivationGranularity())
    with pytest.raises(ValueError, match="does not divide"):
        WeightGranularity(8, 112, group_size=64)
    with pytest.raises(ValueError, match="alpha_init"):
        LSCQuantizer(2, ActivationGranularity(), alpha_init=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        LSCQuantizer(2, ActivationGranularity(), momentum=1.0)
    q = LSCQuantizer(2, WeightGranularity(8, 16))
    with pytest.raises(ValueError, match="does not match"):
        q(torch.randn(8, 17))
    qa = LSCQuantizer(2, ActivationGranularity(channels=4)).train()
    with pytest.raises(ValueError, match="channels"):
        qa(torch.randn(2, 5))
    assert int(qa.num_batches) == 0  # nothing was recorded by the rejected call


def test_several_training_forwards_before_one_backward():
    # SAM2 video clips and multi-image batches run a layer several times per optimizer step.
    q = LSCQuantizer(4, ActivationGranularity()).train()
    x1, x2 = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4, requires_grad=True)
    (q(x1).sum() + q(x2).sum()).backward()
    assert q.alpha.grad is not None and x1.grad is not None
