"""torchao configs for Q-SAM2: ``VRCConfig`` (calibration) and ``QSAM2Config`` (LSC / baseline QAT and PTQ).

Both follow torchao's calibrate-then-convert convention (``step="prepare"`` / ``step="convert"``) and are applied
with ``torchao.quantization.quantize_``. Every field is validated when the config is built, so a bad config fails
before any layer is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torchao.core.config import AOBaseConfig

from qsam2_ext.core import DEFAULT_LAM_REL, QUANTIZERS, SUPPORTED_BITS

STEPS = (None, "prepare", "convert")
# options that only some methods take
_METHOD_OPTIONS = {"alpha_init": ("lsc",), "act_alpha_init": ("lsc",), "momentum": ("lsc", "minmax")}


def _check_positive(name: str, value, kind=(int, float)) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass
class VRCConfig(AOBaseConfig):
    """Variance-Reduced Calibration of Linear and 1x1 Conv2d weights.

    ``step="prepare"`` attaches Gram observers; run calibration forwards; ``step="convert"`` applies
    ``W' = W G (G + lam I)^-1`` with ``lam = lam_rel * tr(G) / d_in``, removes the observers and records a
    ``VRCReport`` on each layer (``qsam2_ext.vrc_reports(model)`` collects them).
    """

    step: str = "prepare"
    lam_rel: float = DEFAULT_LAM_REL

    def __post_init__(self):
        if self.step not in ("prepare", "convert"):
            raise ValueError(f"VRCConfig.step must be 'prepare' or 'convert', got {self.step!r}")
        if isinstance(self.lam_rel, bool) or not isinstance(self.lam_rel, (int, float)) or not (
            math.isfinite(self.lam_rel) and self.lam_rel >= 0
        ):
            raise ValueError(f"lam_rel must be a finite number >= 0, got {self.lam_rel!r}")


@dataclass
class QSAM2Config(AOBaseConfig):
    """Low-bit quantization of Linear and Conv2d layers with Q-SAM2's LSC (or a baseline quantizer).

    * ``step="prepare"``: swap layers for fake-quantized twins (weights; inputs too when ``act_bits`` is set) to
      train (QAT).
    * ``step="convert"``: replace fake-quantized layers by float layers whose weight is a packed
      ``QSAM2PackedTensor`` built from the learned grid (no recomputation); inputs are quantized with the learned
      static clip. Layers that were not prepared are left as they are.
    * ``step=None``: one-shot post-training quantization with the quantizer's initial grid; inputs (``act_bits``)
      are quantized dynamically per token, since no statistics exist.

    ``group_size=None`` is per output channel. A layer whose inputs per channel the group size does not divide
    falls back to per output channel (logged, and visible in the layer's repr).
    """

    bits: int = 2
    act_bits: Optional[int] = None
    group_size: Optional[int] = None
    method: str = "lsc"
    step: Optional[str] = None
    alpha_init: Optional[float] = None
    act_alpha_init: Optional[float] = None
    momentum: Optional[float] = None
    act_per_channel: bool = False
    scale_dtype: Optional[torch.dtype] = None  # dtype of stored grids; None: the weight's dtype

    def __post_init__(self):
        if self.method not in QUANTIZERS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(QUANTIZERS)}")
        for name in ("bits", "act_bits"):
            value = getattr(self, name)
            if (value is not None or name == "bits") and (
                isinstance(value, bool) or not isinstance(value, int) or value not in SUPPORTED_BITS
            ):
                raise ValueError(f"{name} must be one of {SUPPORTED_BITS}{' or None' if name == 'act_bits' else ''}, got {value!r}")
        if self.step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {self.step!r}")
        _check_positive("group_size", self.group_size, int)
        _check_positive("alpha_init", self.alpha_init)
        _check_positive("act_alpha_init", self.act_alpha_init)
        if self.momentum is not None and (
            isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1
        ):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        for option, methods in _METHOD_OPTIONS.items():
            if getattr(self, option) is not None and self.method not in methods:
                raise ValueError(f"{option} applies to method {' or '.join(methods)}, not {self.method!r}")
        if self.act_alpha_init is not None and self.act_bits is None:
            raise ValueError("act_alpha_init needs act_bits")
        if not isinstance(self.act_per_channel, bool):
            raise ValueError(f"act_per_channel must be a bool, got {self.act_per_channel!r}")
        if self.scale_dtype is not None and self.scale_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"scale_dtype must be float32, bfloat16, float16 or None, got {self.scale_dtype!r}")

    def weight_options(self) -> dict:
        """Keyword options of the weight quantizer (validated above to apply to ``method``)."""
        return {} if self.alpha_init is None else {"alpha_init": self.alpha_init}

    def input_options(self) -> dict:
        """Keyword options of the input (activation) quantizer."""
        options = {"alpha_init": self.act_alpha_init, "momentum": self.momentum}
        return {k: v for k, v in options.items() if v is not None}


def vrc_config(step: str = "prepare", lam_rel: float = DEFAULT_LAM_REL) -> VRCConfig:
    """``VRCConfig(step, lam_rel)``: Variance-Reduced Calibration through ``quantize_``."""
    return VRCConfig(step=step, lam_rel=lam_rel)


def qsam2_config(bits: int = 2, act_bits: Optional[int] = None, group_size: Optional[int] = None,
                 method: str = "lsc", step: Optional[str] = None, **options) -> QSAM2Config:
    """``QSAM2Config``: ``quantize_(model, qsam2_config(bits=2))`` quantizes every Linear to 2 bits with LSC."""
    return QSAM2Config(bits=bits, act_bits=act_bits, group_size=group_size, method=method, step=step, **options)
