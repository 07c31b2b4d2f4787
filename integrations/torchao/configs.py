"""torchao configs for Q-SAM2: ``VRCConfig`` (calibration) and ``QSAM2Config`` (LSC / baseline QAT and PTQ).

Fields and names follow torchao's own configs (``IntxWeightOnlyConfig``, ``AWQConfig``): ``weight_dtype``
(``torch.int2`` .. ``torch.int8``), ``granularity`` (``PerAxis(0)`` or ``PerGroup(n)``), ``activation_dtype``,
``step`` (torchao's ``QuantizationStep``), ``packing_format`` and ``version``. ``qsam2_config(bits=2)`` is the short
form; ``QSAM2Config(bits=.., act_bits=.., group_size=..)`` is accepted too and maps onto the same fields. Every
field is validated when the config is built, so a bad config fails before any layer is touched.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization.granularity import Granularity, PerAxis, PerGroup
from torchao.quantization.quantize_.common.quantization_step import QuantizationStep

from qsam2_ext.core import DEFAULT_LAM_REL, SUPPORTED_BITS, LayerQuant
from qsam2_ext.core.settings import check_bits, check_positive
# methods whose weight grids are centred on exactly 0, which torchao's intx tensors store exactly (weights.py)
SYMMETRIC_METHODS = ("pact",)
_INT_DTYPES = {getattr(torch, f"int{b}"): b for b in SUPPORTED_BITS}


class QSAM2PackingFormat(str, enum.Enum):
    """How converted weights are stored.

    * ``QSAM2_PACKED``: ``QSAM2PackedTensor``, codes truly packed (2 bits take 2 bits); the only format torchao lacks.
    * ``UNPACKED_TO_INT8``: torchao's own ``IntxUnpackedToInt8Tensor`` (one int8 per weight, float zero point
      ``-1/2 - center/step``), the format torchao's export/ExecuTorch lowering matches. Only where it stores the
      grid exactly (zero-centred grids, ``SYMMETRIC_METHODS``; checked per layer by ``weights.exact_in_intx``).
    """

    QSAM2_PACKED = "qsam2_packed"
    UNPACKED_TO_INT8 = "unpacked_to_int8"


def _step(value, allowed: tuple) -> Optional[str]:
    """A ``QuantizationStep`` given as the enum or its string value, stored as the string as torchao's
    ``AWQConfig`` stores it (``None`` where one-shot is allowed)."""
    if value is None and None in allowed:
        return None
    try:
        step = QuantizationStep(value.lower() if isinstance(value, str) else value)
    except (ValueError, AttributeError):
        step = None
    if step is None or step not in allowed:
        raise ValueError(f"step must be one of {[getattr(s, 'value', s) for s in allowed]}, got {value!r}")
    return step.value


def _int_dtype(name: str, value, optional: bool) -> Optional[torch.dtype]:
    if value is None and optional:
        return None
    if isinstance(value, torch.dtype) and value in _INT_DTYPES:
        return value
    allowed = ", ".join(str(d) for d in _INT_DTYPES)
    raise ValueError(f"{name} must be one of {allowed}{' or None' if optional else ''}, got {value!r}")


def _bits_dtype(name: str, bits, optional: bool = False) -> torch.dtype:
    check_bits(name, bits, optional)
    return getattr(torch, f"int{bits}")


@dataclass(init=False)
class VRCConfig(AOBaseConfig):
    """Variance-Reduced Calibration of Linear and 1x1 Conv2d weights, in the shape of torchao's calibration flows
    (``AWQConfig`` / ``SmoothQuantConfig``): ``step="prepare"`` attaches Gram observers; run calibration forwards;
    ``step="convert"`` applies ``W' = W G (G + lam I)^-1`` with ``lam = lam_rel * tr(G) / d_in``, removes the
    observers and records a ``VRCReport`` on each layer (``qsam2_ext.vrc_reports(model)`` collects them).

    With ``base_config`` set, convert then quantizes each calibrated layer with it (any torchao config with a
    registered handler: ``QSAM2Config``, ``IntxWeightOnlyConfig``, ...), as ``AWQConfig(base_config)`` does.
    """

    step: QuantizationStep
    lam_rel: float
    base_config: Optional[AOBaseConfig]

    def __init__(self, step: Union[str, QuantizationStep] = "prepare", lam_rel: float = DEFAULT_LAM_REL,
                 base_config: Optional[AOBaseConfig] = None):
        self.step = _step(step, (QuantizationStep.PREPARE, QuantizationStep.CONVERT))
        if isinstance(lam_rel, bool) or not isinstance(lam_rel, (int, float)) or not (
            math.isfinite(lam_rel) and lam_rel >= 0
        ):
            raise ValueError(f"lam_rel must be a finite number >= 0, got {lam_rel!r}")
        if base_config is not None and not isinstance(base_config, AOBaseConfig):
            raise ValueError(f"base_config must be a torchao AOBaseConfig, got {type(base_config).__name__}")
        self.lam_rel = lam_rel
        self.base_config = base_config


@dataclass(init=False)
class QSAM2Config(AOBaseConfig):
    """Low-bit quantization of Linear and Conv2d layers with Q-SAM2's LSC (or a baseline quantizer).

    * ``step="prepare"``: swap layers for fake-quantized twins (weights; inputs too when ``activation_dtype`` is
      set) to train (QAT).
    * ``step="convert"``: replace fake-quantized layers by float layers whose weight holds the learned grid in the
      ``packing_format`` asked for (no recomputation); inputs are quantized with the learned static clip. Layers
      that were not prepared are left as they are.
    * ``step=None``: one-shot post-training quantization with the quantizer's initial grid, kept within each
      weight row's (or group's) range; inputs are quantized dynamically per token, since no statistics exist.

    ``granularity=PerAxis(0)`` is one grid per output channel, ``PerGroup(n)`` one per ``n`` inputs. A layer whose
    inputs per channel ``n`` does not divide falls back to per output channel (logged, visible in its repr).
    A module this config cannot quantize (a 3-D weight, a module that is neither Linear nor Conv2d but holds a
    ``weight``) raises instead of staying float.
    """

    weight_dtype: torch.dtype
    granularity: Granularity
    activation_dtype: Optional[torch.dtype]
    method: str
    step: Optional[QuantizationStep]
    packing_format: QSAM2PackingFormat
    alpha_init: Optional[float]
    act_alpha_init: Optional[float]
    momentum: Optional[float]
    act_per_channel: bool
    scale_dtype: Optional[torch.dtype]  # dtype of stored grids; None: the weight's dtype
    version: int

    def __init__(
        self,
        weight_dtype: Optional[torch.dtype] = None,
        granularity: Optional[Granularity] = None,
        activation_dtype: Optional[torch.dtype] = None,
        method: str = "lsc",
        step: Optional[Union[str, QuantizationStep]] = None,
        packing_format: Union[str, QSAM2PackingFormat] = QSAM2PackingFormat.QSAM2_PACKED,
        alpha_init: Optional[float] = None,
        act_alpha_init: Optional[float] = None,
        momentum: Optional[float] = None,
        act_per_channel: bool = False,
        scale_dtype: Optional[torch.dtype] = None,
        version: int = 1,
        *,
        bits: Optional[int] = None,
        act_bits: Optional[int] = None,
        group_size: Optional[int] = None,
    ):
        # the short forms (bits / act_bits / group_size) map onto torchao's fields; giving both is ambiguous
        if bits is not None:
            if weight_dtype is not None:
                raise ValueError("give weight_dtype or bits, not both")
            weight_dtype = _bits_dtype("bits", bits)
        if act_bits is not None:
            if activation_dtype is not None:
                raise ValueError("give activation_dtype or act_bits, not both")
            activation_dtype = _bits_dtype("act_bits", act_bits, optional=True)
        if group_size is not None:
            if granularity is not None:
                raise ValueError("give granularity or group_size, not both")
            check_positive("group_size", group_size, int)
            granularity = PerGroup(group_size)
        self.weight_dtype = _int_dtype("weight_dtype", torch.int2 if weight_dtype is None else weight_dtype, False)
        self.activation_dtype = _int_dtype("activation_dtype", activation_dtype, True)
        granularity = PerAxis(0) if granularity is None else granularity
        if not (isinstance(granularity, PerAxis) and granularity.axis == 0) and not (
            isinstance(granularity, PerGroup) and not isinstance(granularity.group_size, bool)
            and isinstance(granularity.group_size, int) and granularity.group_size > 0
        ):
            raise ValueError(f"granularity must be PerAxis(0) or PerGroup(n) with n > 0, got {granularity!r}")
        self.granularity = granularity
        self.method = method
        self.step = _step(step, (None, QuantizationStep.PREPARE, QuantizationStep.CONVERT))
        try:
            self.packing_format = QSAM2PackingFormat(packing_format)
        except ValueError:
            raise ValueError(f"packing_format must be one of {[f.value for f in QSAM2PackingFormat]}, "
                             f"got {packing_format!r}") from None
        self.alpha_init, self.act_alpha_init, self.momentum = alpha_init, act_alpha_init, momentum
        self.act_per_channel = act_per_channel
        self.settings  # noqa: B018  (LayerQuant's checks of method, options, act_per_channel: NNCF's hooks share them)
        if self.packing_format == QSAM2PackingFormat.UNPACKED_TO_INT8:
            if self.activation_dtype is not None:
                raise ValueError("packing_format='unpacked_to_int8' is weight-only (torchao's tensor has no static "
                                 "or b-bit per-token input grid): use packing_format='qsam2_packed' with act_bits")
            if method not in SYMMETRIC_METHODS:
                raise ValueError(
                    f"packing_format='unpacked_to_int8' stores only zero-centred grids exactly (method "
                    f"{' or '.join(SYMMETRIC_METHODS)}); {method!r} centres its grid on the data, which torchao's "
                    "(q - zero_point) * scale rounds differently: use packing_format='qsam2_packed'")
        if scale_dtype is not None and scale_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"scale_dtype must be float32, bfloat16, float16 or None, got {scale_dtype!r}")
        self.scale_dtype = scale_dtype
        if version != 1:
            raise ValueError(f"QSAM2Config version must be 1, got {version!r}")
        self.version = version

    # the short forms, read-only
    @property
    def bits(self) -> int:
        return _INT_DTYPES[self.weight_dtype]

    @property
    def act_bits(self) -> Optional[int]:
        return None if self.activation_dtype is None else _INT_DTYPES[self.activation_dtype]

    @property
    def group_size(self) -> Optional[int]:
        return self.granularity.group_size if isinstance(self.granularity, PerGroup) else None

    @property
    def settings(self) -> LayerQuant:
        """The framework-free layer settings (``qsam2_ext.core.settings``) this config quantizes with."""
        return LayerQuant(method=self.method, bits=self.bits, act_bits=self.act_bits, group_size=self.group_size,
                          alpha_init=self.alpha_init, act_alpha_init=self.act_alpha_init, momentum=self.momentum,
                          act_per_channel=self.act_per_channel)

    def weight_options(self) -> dict:
        """Keyword options of the weight quantizer."""
        return self.settings.weight_options()

    def input_options(self) -> dict:
        """Keyword options of the input (activation) quantizer."""
        return self.settings.input_options()


def vrc_config(step: str = "prepare", lam_rel: float = DEFAULT_LAM_REL,
               base_config: Optional[AOBaseConfig] = None) -> VRCConfig:
    """``VRCConfig(step, lam_rel, base_config)``: Variance-Reduced Calibration through ``quantize_``."""
    return VRCConfig(step=step, lam_rel=lam_rel, base_config=base_config)


def qsam2_config(bits: int = 2, act_bits: Optional[int] = None, group_size: Optional[int] = None,
                 method: str = "lsc", step: Optional[str] = None, **options) -> QSAM2Config:
    """``QSAM2Config``: ``quantize_(model, qsam2_config(bits=2))`` quantizes every Linear to 2 bits with LSC."""
    return QSAM2Config(bits=bits, act_bits=act_bits, group_size=group_size, method=method, step=step, **options)
