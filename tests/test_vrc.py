import numpy as np
import pytest
import torch
from torch import nn

from qsam2_ext.core import CalibrationError, GramObserver, VRCCalibration, vrc_report, vrc_solve


def _correlated_inputs(n=4000, d=24, rank=None):
    mix = torch.randn(d, d, dtype=torch.float64) * torch.logspace(0, -3, d, dtype=torch.float64)
    x = torch.randn(n, d, dtype=torch.float64) @ mix.T
    if rank is not None:
        x = x @ torch.linalg.qr(torch.randn(d, rank, dtype=torch.float64))[0] @ torch.randn(rank, d, dtype=torch.float64)
    return x


def _numpy_ridge(x, w, lam):
    """argmin_V ||X V^T - X W^T||^2 + lam ||V||^2 by lstsq on the stacked system [X; sqrt(lam) I] V^T = [X W^T; 0]."""
    d = x.shape[1]
    a = np.vstack([x, np.sqrt(lam) * np.eye(d)])
    b = np.vstack([x @ w.T, np.zeros((d, w.shape[0]))])
    return np.linalg.lstsq(a, b, rcond=None)[0].T


@pytest.mark.parametrize("lam_rel", [1e-4, 1e-2, 0.3])
def test_closed_form_equals_numpy_ridge_least_squares(lam_rel):
    x, w = _correlated_inputs(), torch.randn(10, 24, dtype=torch.float64)
    obs = GramObserver(24)
    for chunk in x.split(700):  # streaming over batches
        obs.update(chunk)
    new, lam = vrc_solve(w, obs.gram, lam_rel)
    assert lam == pytest.approx(lam_rel * float(torch.trace(x.T @ x)) / 24)
    np.testing.assert_allclose(new.numpy(), _numpy_ridge(x.numpy(), w.numpy(), lam), rtol=1e-7, atol=1e-9)


def test_lambda_to_zero_returns_w_for_full_rank_and_projection_otherwise():
    x, w = _correlated_inputs(), torch.randn(10, 24, dtype=torch.float64)
    new, _ = vrc_solve(w, x.T @ x, 0.0)
    np.testing.assert_allclose(new.numpy(), w.numpy(), atol=1e-8)
    xr = _correlated_inputs(rank=16)
    new, _ = vrc_solve(w, xr.T @ xr, 0.0)
    pinv = np.linalg.pinv(xr.numpy(), rcond=1e-10)
    np.testing.assert_allclose(new.numpy(), w.numpy() @ pinv @ xr.numpy(), atol=1e-7)  # W P_row(X): min-norm
    np.testing.assert_allclose((xr @ new.T).numpy(), (xr @ w.T).numpy(), atol=1e-7)


def test_preserves_outputs_and_shrinks_norm():
    x, w = _correlated_inputs(), torch.randn(10, 24, dtype=torch.float64) * 0.1
    g = x.T @ x
    new, lam = vrc_solve(w, g, 1e-2)
    rep = vrc_report("l", w, new, g, len(x), lam)
    assert rep.fro_ratio < 0.9 and rep.std_ratio < 0.9 and rep.max_abs_ratio <= 1.0
    y, y_new = x @ w.T, x @ new.T
    rel = float(((y_new - y) ** 2).sum() / (y**2).sum())
    assert rel == pytest.approx(rep.rel_output_error, rel=1e-9)
    assert rel < 1e-2  # stated tolerance for lam_rel = 1e-2 on this data


def test_model_calibration_linear_and_1x1_conv_with_row_mask():
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    conv = nn.Conv2d(6, 5, 1)
    x = torch.randn(3, 7, 8)
    mask = torch.rand(3, 7) > 0.3
    masks = {id(model[0]): mask}
    with VRCCalibration.for_model(model, row_masks=lambda m: masks.get(id(m))) as calib:
        model(x)
    assert calib.observers["0"].tokens == int(mask.sum()) and calib.observers["2"].tokens == 21
    xv = x[mask].double()
    torch.testing.assert_close(calib.observers["0"].gram, xv.T @ xv)
    before = model[2].weight.detach().clone()
    reports = calib.apply(1e-2)
    assert set(reports) == {"0", "2"} and not torch.equal(model[2].weight, before)

    img = torch.randn(2, 6, 4, 5)
    with VRCCalibration({"conv": conv}) as calib:
        conv(img)
    rows = img.permute(0, 2, 3, 1).reshape(-1, 6).double()
    torch.testing.assert_close(calib.observers["conv"].gram, rows.T @ rows)
    calib.apply()
    assert conv.weight.shape == (5, 6, 1, 1)


def test_bad_input_clear_errors_and_nothing_modified():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    weights = [m.weight.detach().clone() for m in model]
    calib = VRCCalibration({"0": model[0], "2": model[2]})
    with calib:
        model[0](torch.randn(5, 8))  # layer "2" never sees data
    with pytest.raises(CalibrationError, match="'2' saw no calibration data"):
        calib.apply()
    assert all(torch.equal(m.weight, w) for m, w in zip(model, weights))

    calib = VRCCalibration.for_model(model)
    x = torch.randn(5, 8)
    x[2, 3] = float("nan")
    with pytest.raises(CalibrationError, match="'0': non-finite"), calib:
        model(x)
    obs = GramObserver(8, "blk")
    with pytest.raises(CalibrationError, match="'blk': input has 7 features"):
        obs.update(torch.randn(3, 7))
    with pytest.raises(CalibrationError, match="row mask"):
        obs.update(torch.randn(3, 8), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="Gram matrix of shape"):
        vrc_solve(torch.randn(4, 8), torch.eye(7))
    with pytest.raises(ValueError, match="lam_rel"):
        vrc_solve(torch.randn(4, 8), torch.eye(8), -1.0)
    zero = VRCCalibration({"0": model[0]})
    with zero:
        model[0](torch.zeros(4, 8))
    with pytest.raises(CalibrationError, match="all-zero"):
        zero.apply()
    with pytest.raises(TypeError, match="not a Linear or 1x1 Conv2d"):
        VRCCalibration({"c": nn.Conv2d(3, 3, 3)})
    assert all(torch.equal(m.weight, w) for m, w in zip(model, weights))
