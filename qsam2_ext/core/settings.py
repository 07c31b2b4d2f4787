"""``LayerQuant``: how one layer is quantized (method, bit-widths, grid options), framework-free and validated.

The torchao adapter's ``QSAM2Config`` and the NNCF adapter's hooks both take their layer settings from here, so a
setting means the same, and is refused with the same message, in either framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .grid import SUPPORTED_BITS
from .quantizers import QUANTIZERS

# options that only some methods take
METHOD_OPTIONS = {"alpha_init": ("lsc",), "act_alpha_init": ("lsc",), "momentum": ("lsc", "minmax")}


def check_bits(name: str, bits, optional: bool = False) -> None:
    if bits is None and optional:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"{name} must be one of {SUPPORTED_BITS}{' or None' if optional else ''}, got {bits!r}")


def check_positive(name: str, value, kind=(int, float)) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class LayerQuant:
    """One layer's quantization: ``method`` (a ``QUANTIZERS`` key) with ``bits``-bit weights, ``act_bits``-bit inputs
    (None: weight-only), one weight grid per ``group_size`` inputs (None: per output channel), the LSC / MinMax
    options, and per-channel input grids (``act_per_channel``). Every field is checked when it is built."""

    method: str = "lsc"
    bits: int = 2
    act_bits: Optional[int] = None
    group_size: Optional[int] = None
    alpha_init: Optional[float] = None
    act_alpha_init: Optional[float] = None
    momentum: Optional[float] = None
    act_per_channel: bool = False

    def __post_init__(self):
        if self.method not in QUANTIZERS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(QUANTIZERS)}")
        check_bits("bits", self.bits)
        check_bits("act_bits", self.act_bits, optional=True)
        check_positive("group_size", self.group_size, int)
        check_positive("alpha_init", self.alpha_init)
        check_positive("act_alpha_init", self.act_alpha_init)
        m = self.momentum
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < 1):
            raise ValueError(f"momentum must be in [0, 1), got {m!r}")
        for option, methods in METHOD_OPTIONS.items():
            if getattr(self, option) is not None and self.method not in methods:
                raise ValueError(f"{option} applies to method {' or '.join(methods)}, not {self.method!r}")
        if self.act_alpha_init is not None and self.act_bits is None:
            raise ValueError("act_alpha_init needs act_bits (activation_dtype)")
        if not isinstance(self.act_per_channel, bool):
            raise ValueError(f"act_per_channel must be a bool, got {self.act_per_channel!r}")

    def weight_options(self) -> dict:
        """Keyword options of the weight quantizer (checked above to apply to ``method``)."""
        return {} if self.alpha_init is None else {"alpha_init": self.alpha_init}

    def input_options(self) -> dict:
        """Keyword options of the input (activation) quantizer."""
        options = {"alpha_init": self.act_alpha_init, "momentum": self.momentum}
        return {k: v for k, v in options.items() if v is not None}
