import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from qsam2_ext.core.stats import tail_stats


def _numpy_reference(x: np.ndarray, axis, sigmas=6.0):
    centered = x - x.mean(axis=axis, keepdims=True)
    std = x.std(axis=axis, keepdims=True)
    return (scipy_stats.kurtosis(x, axis=axis, fisher=True, bias=True),
            (np.abs(centered) > sigmas * std).mean(axis=axis),
            np.abs(centered).max(axis=axis) / std.squeeze(axis) if axis is not None else np.abs(centered).max() / std)


@pytest.mark.parametrize("dim", [None, 0, 1])
def test_matches_scipy_and_numpy_on_heavy_and_light_tails(dim):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_t(3, size=(40, 500)), rng.uniform(-1, 1, size=(40, 500))])
    s = tail_stats(torch.from_numpy(x).float(), dim=dim)
    kurtosis, outliers, max_over_std = _numpy_reference(x.astype(np.float32).astype(np.float64), dim)
    np.testing.assert_allclose(s.kurtosis.numpy(), kurtosis, rtol=1e-6)
    np.testing.assert_allclose(s.outlier_ratio.numpy(), outliers, atol=1e-12)
    np.testing.assert_allclose(s.max_over_std.numpy(), np.squeeze(max_over_std), rtol=1e-6)
    assert s.count == (x.size if dim is None else x.shape[dim])


def test_closed_forms():
    # discrete uniform on n equally spaced points: excess kurtosis -6(n²+1) / (5(n²-1)), max/std sqrt(3(n-1)/(n+1))
    n = 101
    s = tail_stats(torch.linspace(-1, 1, n, dtype=torch.float64))
    assert float(s.kurtosis) == pytest.approx(-6 * (n * n + 1) / (5 * (n * n - 1)), rel=1e-9)
    assert float(s.max_over_std) == pytest.approx(math.sqrt(3 * (n - 1) / (n + 1)), rel=1e-9)
    assert float(s.outlier_ratio) == 0.0
    # one spike a among n values: max/std = sqrt(n-1), kurtosis = (n²-3n+3)/(n-1) - 3 = (n-2) + 1/(n-1) - 3; beyond 6σ once n-1 > 36
    n = 1000
    spike = torch.zeros(n)
    spike[17] = 5.0
    s = tail_stats(spike)
    assert float(s.max_over_std) == pytest.approx(math.sqrt(n - 1), rel=1e-9)
    assert float(s.kurtosis) == pytest.approx((n - 2) + 1 / (n - 1) - 3, rel=1e-9)
    assert float(s.outlier_ratio) == pytest.approx(1 / n)
    assert float(tail_stats(spike, sigmas=40).outlier_ratio) == 0.0  # sqrt(999) ≈ 31.6 < 40


def test_gaussian_sample_is_not_heavy_tailed():
    s = tail_stats(torch.randn(1_000_000, generator=torch.Generator().manual_seed(0)))
    assert abs(float(s.kurtosis)) < 0.05
    assert float(s.outlier_ratio) < 1e-5  # 2e-9 expected
    assert 4.0 < float(s.max_over_std) < 6.0


def test_constant_and_bad_input():
    s = tail_stats(torch.ones(3, 4), dim=1)
    assert torch.isnan(s.kurtosis).all() and torch.isnan(s.max_over_std).all()
    assert (s.outlier_ratio == 0).all()
    with pytest.raises(ValueError, match="non-empty"):
        tail_stats(torch.empty(0))
    with pytest.raises(ValueError, match="sigmas"):
        tail_stats(torch.ones(3), sigmas=0)
