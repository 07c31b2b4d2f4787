"""VRC, Variance-Reduced Calibration: a closed-form weight update that keeps a layer's output on calibration
data while shrinking its Frobenius norm (and with it the weight variance and outliers).

For a linear map ``y = x W^T + b`` with calibration inputs stacked in ``X``::

    W' = argmin_V ||X V^T - X W^T||^2 + lam ||V||^2  =  W G (G + lam I)^-1,      G = X^T X = sum_t x_t x_t^T

Only the ``d_in x d_in`` Gram matrix ``G`` is needed, accumulated in float64 over any number of batches; the bias
is kept. With the eigendecomposition ``G = V diag(e) V^T`` the update is ``W' = W V diag(e / (e + lam)) V^T``:
input directions that carry little calibration energy are shrunk, the energetic ones kept. For ``lam > 0`` it is
computed as ``W - lam W (G + lam I)^-1`` with a Cholesky solve (``G + lam I`` is positive definite even when
``G`` is rank-deficient, as for LayerNorm-fed layers); ``lam = 0`` uses the eigen form, which gives the limit
cleanly: ``W`` itself for full-rank ``G``, and the minimum-norm solution ``W P_row(X)`` otherwise. ``lam = lam_rel * tr(G) / d_in`` makes the knob scale-free: ``lam_rel`` is relative to the mean
eigenvalue of ``G``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from ..errors import QSAM2Error

# Chosen by measurement (benchmarks/core_defaults.py, hiera_t at 512², held-out photos): 1e-2 gives the best
# W2 + W3 weight-only MinMax fidelity (+6.2 / +2.8 dB encoder SQNR over no VRC); W4 prefers less (1e-4..1e-3).
DEFAULT_LAM_REL = 1e-2
# Relative eigenvalue cut-off for the lam_rel = 0 (minimum-norm projection) case.
_RCOND = 1e-10


class CalibrationError(QSAM2Error):
    """Calibration data or statistics cannot produce a VRC update; the message names the layer."""


class GramObserver:
    """Streaming ``G = sum x x^T`` (float64) and token count of the rows entering one linear layer."""

    def __init__(self, in_features: int, name: str = ""):
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.in_features = in_features
        self.name = name
        self.gram: Optional[torch.Tensor] = None
        self.tokens = 0

    @torch.no_grad()
    def update(self, rows: torch.Tensor, row_mask: Optional[torch.Tensor] = None) -> None:
        """Add the rows of ``rows`` (``(..., in_features)``) whose ``row_mask`` (shaped ``rows.shape[:-1]``) is True."""
        if rows.shape[-1] != self.in_features:
            raise CalibrationError(
                f"layer {self.name!r}: input has {rows.shape[-1]} features, expected {self.in_features}"
            )
        x = rows.reshape(-1, self.in_features)
        if row_mask is not None:
            if row_mask.shape != rows.shape[:-1]:
                raise CalibrationError(
                    f"layer {self.name!r}: row mask of shape {tuple(row_mask.shape)} does not match "
                    f"input rows {tuple(rows.shape[:-1])}"
                )
            x = x[row_mask.reshape(-1).to(torch.bool)]
        x = x.to(torch.float64)
        if not torch.isfinite(x).all():
            raise CalibrationError(f"layer {self.name!r}: non-finite calibration activations (NaN or Inf)")
        if self.gram is None:
            self.gram = torch.zeros(self.in_features, self.in_features, dtype=torch.float64, device=x.device)
        self.gram.addmm_(x.T, x)
        self.tokens += x.shape[0]

    def check(self) -> None:
        """Raise ``CalibrationError`` if these statistics cannot calibrate the layer."""
        if self.gram is None or self.tokens == 0:
            raise CalibrationError(f"layer {self.name!r} saw no calibration data")
        if not torch.trace(self.gram) > 0:
            raise CalibrationError(f"layer {self.name!r} saw only all-zero calibration inputs")


@dataclass(frozen=True)
class VRCReport:
    """What VRC did to one layer. Ratios are calibrated / original."""

    layer: str
    tokens: int
    lam: float
    fro_ratio: float  # ||W'||_F / ||W||_F
    std_ratio: float  # std(W') / std(W)
    max_abs_ratio: float  # max|W'| / max|W|
    rel_output_error: float  # tr((W'-W) G (W'-W)^T) / tr(W G W^T): relative output change on calibration data

    def as_dict(self) -> dict:
        return asdict(self)


def _check_lam_rel(lam_rel: float) -> float:
    if isinstance(lam_rel, bool) or not isinstance(lam_rel, (int, float)) or not math.isfinite(lam_rel) or lam_rel < 0:
        raise ValueError(f"lam_rel must be a finite number >= 0, got {lam_rel!r}")
    return float(lam_rel)


def vrc_solve(weight: torch.Tensor, gram: torch.Tensor, lam_rel: float = DEFAULT_LAM_REL) -> tuple[torch.Tensor, float]:
    """``W' = W G (G + lam I)^-1`` for a 2-D ``weight`` ``(out, in)``; returns ``(W' in weight's dtype, lam)``."""
    lam_rel = _check_lam_rel(lam_rel)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    d = weight.shape[1]
    if gram.shape != (d, d):
        raise ValueError(f"Gram matrix of shape {tuple(gram.shape)} does not match a weight with {d} inputs")
    g = gram.to(torch.float64)
    if not torch.isfinite(g).all():
        raise ValueError("Gram matrix is not finite")
    g = (g + g.T) / 2
    lam = lam_rel * float(torch.trace(g)) / d
    w = weight.detach().to(torch.float64)
    if lam > 0:
        # W' = W - lam W (G + lam I)^-1: one Cholesky solve of an SPD system (G + lam I is SPD for any G >= 0)
        factor, info = torch.linalg.cholesky_ex(g + lam * torch.eye(d, dtype=g.dtype, device=g.device))
        if int(info) == 0:
            new = w - lam * torch.cholesky_solve(w.T, factor).T
            return new.to(weight.dtype), lam
    # lam = 0 (or a lam too small to regularise G numerically): the eigen form, exact for rank-deficient G
    evals, evecs = torch.linalg.eigh(g)
    evals = evals.clamp_min(0)
    shrink = evals / (evals + lam) if lam > 0 else (evals > _RCOND * evals.max()).to(torch.float64)
    new = ((w @ evecs) * shrink) @ evecs.T
    return new.to(weight.dtype), lam


def vrc_report(name: str, weight: torch.Tensor, new_weight: torch.Tensor, gram: torch.Tensor, tokens: int, lam: float) -> VRCReport:
    w, n, g = weight.detach().double(), new_weight.detach().double(), gram.double()
    delta = n - w
    return VRCReport(
        layer=name,
        tokens=int(tokens),
        lam=float(lam),
        fro_ratio=float(n.norm() / w.norm()),
        std_ratio=float(n.std() / w.std()),
        max_abs_ratio=float(n.abs().max() / w.abs().max()),
        rel_output_error=float(((delta @ g) * delta).sum() / ((w @ g) * w).sum()),
    )
