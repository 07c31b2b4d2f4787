"""Which elements share one grid: the unit of statistics and of learned clip parameters.

Weights use live statistics per output channel (rows of the weight viewed as ``(out, -1)``), optionally split
into groups of ``group_size`` consecutive input elements. Activations use statistics tracked over batches,
per tensor or per channel along ``channel_dim``. Every granularity maps a tensor to a view whose statistics
reduce over ``dims``, and maps parameters of ``stat_shape`` onto that view by broadcasting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


def effective_group_size(in_size: int, group_size: Optional[int]) -> Optional[int]:
    """``group_size`` if it divides the ``in_size`` inputs per output channel, else ``None`` (per output channel):
    the documented fallback for e.g. Hiera-B+/L widths 112/144/224/288, so no model is left half quantized."""
    return group_size if group_size is None or in_size % group_size == 0 else None


@dataclass(frozen=True)
class WeightGranularity:
    """Per output channel (``group_size=None``) or per group of ``group_size`` inputs within each channel."""

    out_channels: int
    in_size: int  # elements per output channel: in_features, or in_channels * kh * kw for a conv
    group_size: Optional[int] = None

    tracks_statistics = False  # weights: statistics are recomputed from the live tensor at every forward

    def __post_init__(self):
        if self.out_channels < 1 or self.in_size < 1:
            raise ValueError(f"weight shape ({self.out_channels}, {self.in_size}) is empty")
        if self.group_size is not None:
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
                raise ValueError(f"group_size must be a positive int or None, got {self.group_size!r}")
            if self.in_size % self.group_size:
                raise ValueError(
                    f"group_size {self.group_size} does not divide the {self.in_size} inputs per output channel"
                )

    @classmethod
    def for_weight(cls, weight: torch.Tensor, group_size: Optional[int] = None) -> "WeightGranularity":
        return cls(weight.shape[0], weight[0].numel(), group_size)

    @property
    def groups(self) -> int:
        return 1 if self.group_size is None else self.in_size // self.group_size

    @property
    def stat_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.groups)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.out_channels or x[0].numel() != self.in_size:
            raise ValueError(
                f"weight of shape {tuple(x.shape)} does not match ({self.out_channels}, {self.in_size})"
            )
        return x.reshape(self.out_channels, self.groups, -1)

    def dims(self, view: torch.Tensor) -> tuple[int, ...]:
        return (-1,)

    def expand(self, p: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        return p.reshape(self.out_channels, self.groups, 1)


@dataclass(frozen=True)
class ActivationGranularity:
    """Per tensor (``channels=None``) or per channel along ``channel_dim`` (-1 for Linear inputs, 1 for NCHW)."""

    channels: Optional[int] = None
    channel_dim: int = -1

    tracks_statistics = True  # activations: statistics follow an exponential moving average over batches

    def __post_init__(self):
        if self.channels is not None and self.channels < 1:
            raise ValueError(f"channels must be positive or None, got {self.channels!r}")

    @property
    def stat_shape(self) -> tuple[int, ...]:
        return () if self.channels is None else (self.channels,)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None and x.shape[self.channel_dim] != self.channels:
            raise ValueError(
                f"activation of shape {tuple(x.shape)} has {x.shape[self.channel_dim]} channels at dim "
                f"{self.channel_dim}, expected {self.channels}"
            )
        return x

    def dims(self, view: torch.Tensor) -> tuple[int, ...]:
        if self.channels is None:
            return tuple(range(view.ndim))
        cdim = self.channel_dim % view.ndim
        return tuple(d for d in range(view.ndim) if d != cdim)

    def expand(self, p: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        if self.channels is None:
            return p
        shape = [1] * view.ndim
        shape[self.channel_dim % view.ndim] = self.channels
        return p.reshape(shape)
