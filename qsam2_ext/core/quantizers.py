"""Fake quantizers: LSC (Q-SAM2's Learnable Statistical Clipping) and the baselines MinMax, PACT and LSQ.

All four share one interface and one grid (see ``grid.py``); they differ only in how the clip range ``[lo, hi]``
(the grid's outermost levels) is chosen and what learns. A quantizer acts on weights (live per-channel or
per-group statistics, ``WeightGranularity``) or on activations (statistics tracked over batches, per tensor or
per channel, ``ActivationGranularity``).

Activation statistics are updated in ``train()`` mode or while ``observing`` is set (see ``observing()``),
following ``running = momentum * running + (1 - momentum) * batch`` once the first batch has initialised them;
otherwise they are frozen. A quantizer is always active, in eval mode too; an activation quantizer that never
saw data raises instead of passing values through.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Literal, Optional, Union

import torch
from torch import nn

from .granularity import ActivationGranularity, WeightGranularity
from .grid import center_step, check_bits, code_range, dequantize, fake_quantize, quantize, quantize_dequantize

Granularity = Union[WeightGranularity, ActivationGranularity]

# Smallest clip half-width: keeps the step positive for constant rows (std 0) or a collapsed learned range.
_MIN_HALF_RANGE = 1e-8


def _compute_precision(x: torch.Tensor) -> torch.Tensor:
    """Statistics and rounding run in float32 at least (bf16/fp16 inputs are upcast; float64 stays)."""
    return x if x.dtype == torch.float64 else x.float()


class FakeQuantizer(nn.Module):
    """Quantize-dequantize onto the grid spanning the clip range ``[lo, hi]`` chosen by the subclass."""

    ste: Literal["clip", "round"] = "clip"
    symmetric = False  # whether the clip range is always [-a, a] (a grid centred on exactly 0)

    def __init__(self, bits: int, granularity: Granularity):
        super().__init__()
        self.bits = check_bits(bits)
        if not isinstance(granularity, (WeightGranularity, ActivationGranularity)):
            raise TypeError(f"granularity must be a WeightGranularity or ActivationGranularity, got {granularity!r}")
        self.granularity = granularity
        self.observing = False

    @property
    def tracks_statistics(self) -> bool:
        return self.granularity.tracks_statistics

    def clip_range(self, view: torch.Tensor, update: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)`` of ``stat_shape`` for this (viewed) input; ``update`` lets tracked statistics move."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = _compute_precision(self.granularity.view(x))
        update = self.tracks_statistics and (self.training or self.observing)
        lo, hi = self.clip_range(view, update)
        g = self.granularity
        out = fake_quantize(view, g.expand(lo, view), g.expand(hi, view), self.bits, self.ste)
        return out.reshape(x.shape).to(x.dtype)

    @torch.no_grad()
    def grid(self, x: Optional[torch.Tensor] = None, within_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(center, step)`` this quantizer rounds onto, shaped ``stat_shape``, without updating anything.

        Weights need the weight ``x`` (live statistics); activations use their frozen statistics.
        ``within_range`` (one-shot PTQ of a weight, no training to move the clip): each unit's clip range is the
        one with the least squared weight error among the quantizer's own, kept inside the data (a bound beyond the
        data clips nothing and only coarsens the grid), and, for LSC, the data range narrowed about its centre by
        ``RANGE_SHRINKS`` (about 0 for symmetric grids; LSQ's grid, the multiples of its step, is left as it is).
        LSC's initial ``mu ± 2.5 sigma`` at 4 bits lies beyond uniform (randomly initialised) rows, whose max is
        ``sqrt(3) sigma``: 20.4 dB output SQNR on a random 512-input Linear, 23.6 dB within range, torchao's
        symmetric intx 23.5 dB (``benchmarks/results/one_shot*.md``).
        """
        if x is None:
            if not self.tracks_statistics:
                raise ValueError("a weight quantizer needs the weight to compute its grid")
            view = torch.empty((0,))
        else:
            view = _compute_precision(self.granularity.view(x))
        lo, hi = self.clip_range(view, update=False)
        if within_range and self.ste == "clip":  # LSQ's grid is the multiples of its step: kept as it is
            if x is None or self.tracks_statistics:
                raise ValueError("within_range applies to weights")
            lo, hi = self._best_range(view, lo.detach(), hi.detach())
        return center_step(lo.detach(), hi.detach(), self.bits)

    # one-shot candidates besides the quantizer's own range: the data range narrowed to these fractions (LSC only:
    # the baselines keep their definitions, min-max and PACT's max|x|)
    RANGE_SHRINKS: tuple = ()

    def _best_range(self, view: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
        """Per unit, the candidate ``(lo, hi)`` whose grid has the least squared error on ``view`` (``grid``)."""
        if self.symmetric:  # stays centred on 0
            top = self._stat(view.abs(), torch.amax).clamp_min(_MIN_HALF_RANGE)
            bounds = [(-torch.minimum(hi, top), torch.minimum(hi, top))] + [(-f * top, f * top)
                                                                            for f in self.RANGE_SHRINKS]
        else:
            mn, mx = self._stat(view, torch.amin), self._stat(view, torch.amax)
            own_lo = torch.minimum(torch.maximum(lo, mn), mx)
            own_hi = torch.maximum(torch.minimum(hi, mx), own_lo + 2 * _MIN_HALF_RANGE)
            mid, half = (mn + mx) / 2, ((mx - mn) / 2).clamp_min(_MIN_HALF_RANGE)
            bounds = [(own_lo, own_hi)] + [(mid - f * half, mid + f * half) for f in self.RANGE_SHRINKS]
        g = self.granularity
        errors = []
        for b_lo, b_hi in bounds:
            center, step = (g.expand(t, view) for t in center_step(b_lo, b_hi, self.bits))
            err = (quantize_dequantize(view, center, step, self.bits) - view).square()
            errors.append(err.sum(dim=g.dims(view)).reshape(g.stat_shape))
        best = torch.stack(errors).argmin(0)  # ties keep the earlier candidate: the quantizer's own range first
        pick = lambda values: torch.stack(values).gather(0, best.unsqueeze(0)).squeeze(0)  # noqa: E731
        return pick([b for b, _ in bounds]), pick([b for _, b in bounds])

    @torch.no_grad()
    def encode(self, x: torch.Tensor, within_range: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Signed int8 codes shaped like ``x`` plus ``(center, step)`` of ``stat_shape``: what convert stores
        (``within_range``: see ``grid``)."""
        center, step = self.grid(x, within_range)
        view = _compute_precision(self.granularity.view(x))
        g = self.granularity
        codes = quantize(view, g.expand(center, view), g.expand(step, view), self.bits)
        return codes.reshape(x.shape), center, step

    def decode(self, codes: torch.Tensor, center: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        view = self.granularity.view(codes)
        g = self.granularity
        return dequantize(view, g.expand(center, view), g.expand(step, view)).reshape(codes.shape)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, granularity={self.granularity}"

    # -- statistics ---------------------------------------------------------------------------------------
    def _stat(self, view: torch.Tensor, fn) -> torch.Tensor:
        return fn(view.detach(), self.granularity.dims(view)).reshape(self.granularity.stat_shape)

    def _moments(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (population) standard deviation per statistics unit."""
        std, mean = torch.std_mean(view.detach(), dim=self.granularity.dims(view), correction=0)
        shape = self.granularity.stat_shape
        return mean.reshape(shape), std.reshape(shape)

    def _register_running(self, *names: str) -> None:
        for name in names:
            self.register_buffer(name, torch.zeros(self.granularity.stat_shape))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))

    def _track(self, batch: dict, update: bool, momentum: float) -> list[torch.Tensor]:
        """EMA-update the named running buffers from ``batch`` (when allowed) and return the running values."""
        if update:
            first = bool(self.num_batches == 0)
            for name, value in batch.items():
                running = getattr(self, name)
                running.copy_(value if first else momentum * running + (1.0 - momentum) * value)
            self.num_batches += 1
        elif self.num_batches == 0:
            raise RuntimeError(
                f"{type(self).__name__} has no activation statistics yet: run forwards in train() mode or "
                "inside qsam2_ext.core.observing(model) before evaluating"
            )
        # copies: the graph of this forward must not see later in-place EMA updates (several forwards per step)
        return [getattr(self, name).clone() for name in batch]


def _check_momentum(momentum: float) -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
    return float(momentum)


class LSCQuantizer(FakeQuantizer):
    """Learnable Statistical Clipping: clip to ``mu ± alpha * sigma``, then round onto the tied grid.

    ``mu`` and ``sigma`` are statistics (per channel/group of the live weight, or EMA-tracked activation
    statistics) and carry no gradient; ``alpha`` (one per statistics unit) learns through the clip bounds with a
    PACT-style gradient: ``d out / d alpha = ±sigma`` for values clipped above/below, 0 inside the range.
    Centering on ``mu`` makes the grid asymmetric where the data are (post-GELU inputs, shifted channels).
    """

    # Defaults, measured (benchmarks/core_defaults.py; table in benchmarks/results/core_defaults.md):
    # * weights: the MSE-optimal alpha of this grid for Gaussian data (1.48, 2.05, 2.53, 3.94). Measured optima
    #   lie on either side: SAM2's random-init weights are uniform (1.25/1.5/1.75/2) and heavy-tailed trained
    #   weights are Laplace-like (1.63/2.56/3.46/6.88); the Gaussian value costs little on both.
    # * activations: the optimum on SAM2 encoder layer inputs of real photos (per tensor, EMA statistics).
    # * momentum: 0.8 tracked pooled statistics best over one pass of 18 single-photo batches, 0.9 next; QAT
    #   runs far longer than one pass, where the larger average is worth its lag.
    DEFAULT_ALPHA_WEIGHT = {2: 1.5, 3: 2.0, 4: 2.5, 8: 4.0}
    RANGE_SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)  # one-shot only: see FakeQuantizer.grid
    DEFAULT_ALPHA_ACTIVATION = {2: 1.5, 3: 2.25, 4: 3.0, 8: 5.0}
    DEFAULT_MOMENTUM = 0.9

    def __init__(
        self,
        bits: int,
        granularity: Granularity,
        alpha_init: Optional[float] = None,
        momentum: Optional[float] = None,
    ):
        super().__init__(bits, granularity)
        if alpha_init is None:
            table = self.DEFAULT_ALPHA_ACTIVATION if self.tracks_statistics else self.DEFAULT_ALPHA_WEIGHT
            alpha_init = table[bits]
        if (
            isinstance(alpha_init, bool)
            or not isinstance(alpha_init, (int, float))
            or not math.isfinite(alpha_init)
            or alpha_init <= 0
        ):
            raise ValueError(f"alpha_init must be a positive number, got {alpha_init!r}")
        self.momentum = _check_momentum(self.DEFAULT_MOMENTUM if momentum is None else momentum)
        self.alpha = nn.Parameter(torch.full(granularity.stat_shape, float(alpha_init)))
        if self.tracks_statistics:
            self._register_running("running_mean", "running_std")

    def clip_range(self, view, update):
        if self.tracks_statistics:
            mean, std = self._moments(view) if view.numel() else (None, None)
            mean, std = self._track({"running_mean": mean, "running_std": std}, update, self.momentum)
        else:
            mean, std = self._moments(view)
        half = (self.alpha * std).clamp_min(_MIN_HALF_RANGE)
        return mean - half, mean + half

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", momentum={self.momentum}" if self.tracks_statistics else "")


class MinMaxQuantizer(FakeQuantizer):
    """Classical min-max: the grid spans ``[min, max]`` (live for weights, EMA-tracked for activations)."""

    DEFAULT_MOMENTUM = 0.9

    def __init__(self, bits: int, granularity: Granularity, momentum: Optional[float] = None):
        super().__init__(bits, granularity)
        self.momentum = _check_momentum(self.DEFAULT_MOMENTUM if momentum is None else momentum)
        if self.tracks_statistics:
            self._register_running("running_min", "running_max")

    def clip_range(self, view, update):
        lo, hi = (self._stat(view, torch.amin), self._stat(view, torch.amax)) if view.numel() else (None, None)
        if self.tracks_statistics:
            lo, hi = self._track({"running_min": lo, "running_max": hi}, update, self.momentum)
        return lo, torch.maximum(hi, lo + 2 * _MIN_HALF_RANGE)


class _FirstBatchInit(FakeQuantizer):
    """Base for quantizers whose learned parameter is initialised from the first batch they see."""

    def __init__(self, bits: int, granularity: Granularity):
        super().__init__(bits, granularity)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _initialize(self, view: torch.Tensor) -> None:
        raise NotImplementedError

    def _init_once(self, view: torch.Tensor, update: bool) -> None:
        if bool(self.initialized):
            return
        if self.tracks_statistics and not update:
            raise RuntimeError(
                f"{type(self).__name__} was never initialised: run forwards in train() mode or inside "
                "qsam2_ext.core.observing(model) before evaluating"
            )
        with torch.no_grad():
            self._initialize(view)
            self.initialized.fill_(True)


class PACTQuantizer(_FirstBatchInit):
    """PACT with a symmetric learned clip ``[-alpha, alpha]`` (signed: SAM2's layer inputs are signed).

    ``alpha`` starts at the first batch's ``max|x|`` per statistics unit (no clipping at the start) and learns
    through the clip bounds (``d out / d alpha = ±1`` above/below the range, 0 inside), as in PACT.
    """

    symmetric = True

    def __init__(self, bits: int, granularity: Granularity):
        super().__init__(bits, granularity)
        self.alpha = nn.Parameter(torch.ones(granularity.stat_shape))

    def _initialize(self, view):
        self.alpha.copy_(self._stat(view.abs(), torch.amax).clamp_min(_MIN_HALF_RANGE))

    def clip_range(self, view, update):
        self._init_once(view, update)
        alpha = self.alpha.clamp_min(_MIN_HALF_RANGE)
        return -alpha, alpha


def _scale_grad(p: torch.Tensor, factor: float) -> torch.Tensor:
    """Value of ``p``, gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    return (p - p * factor).detach() + p * factor


class LSQQuantizer(_FirstBatchInit):
    """LSQ (Esser et al. 2020): learned step ``s`` on the signed mid-tread grid ``k * s``, k in [-Q_N, Q_P].

    ``s`` starts at ``2 <|x|> / sqrt(Q_P)`` (first batch) and its gradient is scaled by ``1 / sqrt(N * Q_P)``,
    with N the elements per step for weights and the features per sample for activations.
    """

    ste = "round"

    def __init__(self, bits: int, granularity: Granularity):
        super().__init__(bits, granularity)
        self.step = nn.Parameter(torch.ones(granularity.stat_shape))

    def _initialize(self, view):
        q_p = code_range(self.bits)[1]
        self.step.copy_((2 * self._stat(view.abs(), torch.mean) / math.sqrt(q_p)).clamp_min(_MIN_HALF_RANGE))

    def clip_range(self, view, update):
        self._init_once(view, update)
        q_n, q_p = -code_range(self.bits)[0], code_range(self.bits)[1]
        step = self.step
        if view.numel():
            n = view[0].numel() if self.tracks_statistics else view.numel() // step.numel()
            step = _scale_grad(step, 1.0 / math.sqrt(n * q_p))
        step = step.clamp_min(_MIN_HALF_RANGE)
        return -q_n * step, q_p * step


QUANTIZERS = {"lsc": LSCQuantizer, "minmax": MinMaxQuantizer, "pact": PACTQuantizer, "lsq": LSQQuantizer}


def make_quantizer(method: str, bits: int, granularity: Granularity, **options) -> FakeQuantizer:
    """Build a quantizer by method name (``lsc``, ``minmax``, ``pact``, ``lsq``) with method-specific options."""
    try:
        cls = QUANTIZERS[method]
    except KeyError:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {sorted(QUANTIZERS)}") from None
    return cls(bits, granularity, **options)


@contextlib.contextmanager
def observing(model: nn.Module) -> Iterator[nn.Module]:
    """Let activation quantizers update their statistics without switching the model to train() mode."""
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantizer)]
    previous = [q.observing for q in quantizers]
    for q in quantizers:
        q.observing = True
    try:
        yield model
    finally:
        for q, p in zip(quantizers, previous):
            q.observing = p
