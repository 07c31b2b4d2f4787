"""Tail statistics of a tensor: how heavy-tailed weights and activations are, the property Q-SAM2 targets.

* ``kurtosis``: excess (Fisher) kurtosis from population moments, ``E[(x-μ)⁴] / σ⁴ - 3``: 0 for a Gaussian,
  -1.2 for a uniform distribution (PyTorch's default Linear initialisation), large for heavy tails.
* ``outlier_ratio``: the share of values with ``|x - μ| > k·σ`` (``k`` = 6 by default). A Gaussian puts
  2·10⁻⁹ of its mass there, a uniform none, so any visible share is a heavy tail.
* ``max_over_std``: ``max |x - μ| / σ``, the range a min-max quantizer has to cover, in standard deviations:
  ``√3`` ≈ 1.73 for a uniform, about 4-5 for a Gaussian sample of 10⁴-10⁶ values.

Statistics are taken over the whole tensor (``dim=None``) or along one dimension (per row / channel), in float64.
``σ = 0`` (a constant) gives NaN kurtosis and max/std, and an outlier ratio of 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

OUTLIER_SIGMAS = 6.0


@dataclass(frozen=True)
class TailStats:
    kurtosis: torch.Tensor
    outlier_ratio: torch.Tensor
    max_over_std: torch.Tensor
    count: int  # values per statistic

    def as_floats(self) -> dict:
        """Scalars (whole-tensor statistics) as plain floats."""
        return {"kurtosis": float(self.kurtosis), "outlier_ratio": float(self.outlier_ratio),
                "max_over_std": float(self.max_over_std), "count": self.count}


def tail_stats(x: torch.Tensor, dim: Optional[int] = None, sigmas: float = OUTLIER_SIGMAS) -> TailStats:
    """Excess kurtosis, share beyond ``sigmas``·σ and max/std of ``x`` (whole, or along ``dim``)."""
    if not isinstance(x, torch.Tensor) or x.numel() == 0:
        raise ValueError("tail_stats needs a non-empty tensor")
    if not sigmas > 0:
        raise ValueError(f"sigmas must be positive, got {sigmas!r}")
    x = x.detach().to(torch.float64)
    if dim is None:
        x, dim = x.reshape(-1), 0
    centered = x - x.mean(dim, keepdim=True)
    var = centered.square().mean(dim, keepdim=True)
    std = var.sqrt()
    kurtosis = centered.pow(4).mean(dim, keepdim=True) / var.square() - 3.0
    outliers = (centered.abs() > sigmas * std).to(torch.float64).mean(dim, keepdim=True)
    max_over_std = centered.abs().amax(dim, keepdim=True) / std
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
    constant = var == 0
    return TailStats(
        kurtosis=torch.where(constant, nan, kurtosis).squeeze(dim),
        outlier_ratio=outliers.squeeze(dim),
        max_over_std=torch.where(constant, nan, max_over_std).squeeze(dim),
        count=x.shape[dim],
    )
