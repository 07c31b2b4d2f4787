"""The recipe schema (pydantic): what a recipe file may say, field by field.

Only the shape and the range of each field are checked here; whether the combination makes a valid quantizer is
decided by the one place that builds quantizers (``QSAM2Config``), and whether rules fit a model by ``plan``.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from pydantic import field_validator, model_validator

from qsam2_ext.core import DEFAULT_LAM_REL, QUANTIZERS, SUPPORTED_BITS

REGEX_PREFIX = "re:"  # as in torchao's FqnToConfig: "re:<pattern>" is matched with re.fullmatch
MAX_PATTERN = 512

try:  # Python's own regex parser: 3.11+ keeps it private, 3.10 as sre_parse
    from re import _parser as _re_parser
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _re_parser  # type: ignore[no-redef]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown (misspelt) field is an error


def _check_bits(value: Optional[int]) -> Optional[int]:
    if value is not None and value not in SUPPORTED_BITS:
        raise ValueError(f"must be one of {SUPPORTED_BITS}")
    return value


MAX_REPEATS = 3  # repetitions in one pattern: backtracking over k of them grows as len(name) ** k


def _repeats(parsed, inside: bool = False) -> int:
    """The number of repetitions in a parsed pattern; raises on a repetition or an alternation inside a repetition:
    the shapes whose backtracking is exponential in the name's length (a recipe is a file: its patterns must not
    hang the matcher)."""
    count = 0
    for op, arg in parsed:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = arg
            repeated = high is _re_parser.MAXREPEAT or high > 1
            if repeated and inside:
                raise ValueError("nested repetition (e.g. '(a+)*') can take exponential time: simplify it")
            count += repeated + _repeats(sub, inside or repeated)
        elif name == "BRANCH":
            if inside:
                raise ValueError("an alternation inside a repetition (e.g. '(a|b)*') can take exponential time: "
                                 "simplify it")
            count += sum(_repeats(sub, inside) for sub in arg[1])
        elif name in ("SUBPATTERN", "ATOMIC_GROUP", "ASSERT", "ASSERT_NOT"):
            count += _repeats(arg[-1], inside)
    return count


def check_pattern(pattern: str) -> str:
    """A module name, or ``re:`` and a regular expression (compiled here so a bad one fails on its line)."""
    if not pattern:
        raise ValueError("must be a module name or 're:<regex>'")
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"longer than {MAX_PATTERN} characters")
    if pattern.startswith(REGEX_PREFIX):
        try:
            regex = pattern[len(REGEX_PREFIX):]
            re.compile(regex)
            if _repeats(_re_parser.parse(regex)) > MAX_REPEATS:
                raise ValueError(f"more than {MAX_REPEATS} repetitions (*, +, {{m,n}}): split it into several rules")
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from None
    return pattern


def matches(pattern: str, name: str) -> bool:
    if pattern.startswith(REGEX_PREFIX):
        return re.fullmatch(pattern[len(REGEX_PREFIX):], name) is not None
    return pattern == name


class Quant(_Strict):
    """How a layer is quantized. In ``defaults`` and in rules; a rule's unset fields come from ``defaults``."""

    method: Optional[str] = None
    bits: Optional[int] = None
    act_bits: Optional[int] = None  # None: weight-only
    group_size: Optional[PositiveInt] = None  # None: one grid per output channel
    alpha_init: Optional[PositiveFloat] = None  # LSC clip init (mu +- alpha sigma); None: the measured default
    act_alpha_init: Optional[PositiveFloat] = None
    momentum: Optional[float] = Field(default=None, ge=0, lt=1)
    act_per_channel: Optional[bool] = None

    _bits = field_validator("bits", "act_bits")(_check_bits)

    @field_validator("method")
    @classmethod
    def _method(cls, value):
        if value is not None and value not in QUANTIZERS:
            raise ValueError(f"must be one of {sorted(QUANTIZERS)}")
        return value


class Rule(Quant):
    match: str  # exact module name or "re:<regex>"
    skip: bool = False  # leave the matched layers in float (a float island)
    optional: bool = False  # matching no layer is fine (else an error: a typo guard)
    note: Optional[str] = None  # why; shown by `qsam2 recipe explain`

    _match = field_validator("match")(check_pattern)

    @model_validator(mode="after")
    def _skip_alone(self):
        set_quant = sorted(set(self.model_fields_set) & set(Quant.model_fields))
        if self.skip and set_quant:
            raise ValueError(f"a skip rule leaves layers in float: remove {', '.join(set_quant)}")
        return self

    def quant_fields(self) -> dict:
        """The quantization fields this rule sets itself (explicit nulls included)."""
        return {k: getattr(self, k) for k in self.model_fields_set if k in Quant.model_fields}


class Calibration(_Strict):
    """VRC before quantization: which layers, the relative ridge ``lam_rel``, how many images."""

    vrc: bool = True
    layers: list[str] = Field(default_factory=lambda: [r"re:image_encoder\..*"])
    lam_rel: NonNegativeFloat = DEFAULT_LAM_REL
    images: PositiveInt = 16
    batch_size: PositiveInt = 4

    _layers = field_validator("layers")(lambda value: [check_pattern(p) for p in value])


class Losses(_Strict):
    labels: bool = True  # SAM2's supervised losses (focal, dice, IoU, object score) on labeled data
    distill_mask: NonNegativeFloat = 0.0  # weight of the float teacher's mask / object-score KL
    distill_features: NonNegativeFloat = 0.0  # weight of the teacher image-feature MSE


class Training(_Strict):
    """Optional QAT after calibration (``steps: 0``: one-shot post-training quantization)."""

    steps: NonNegativeInt = 0
    batch_size: PositiveInt = 4
    lr: NonNegativeFloat = 1e-5
    quantizer_lr: NonNegativeFloat = 1e-3
    clip_length: PositiveInt = 1  # > 1: video clips (trains the memory path too; needs video data)
    losses: Losses = Field(default_factory=Losses)
    options: dict[str, Any] = Field(default_factory=dict)  # any other TrainConfig field (qsam2 train --help)

    def train_config(self, **overrides):
        """The ``TrainConfig`` of this section (raises ``ValueError`` for a bad combination)."""
        from qsam2_ext.train import TrainConfig

        losses = {} if self.losses.labels else {"focal": 0.0, "dice": 0.0, "iou": 0.0, "object": 0.0}
        settings = {"steps": max(self.steps, 1), "batch_size": self.batch_size, "lr": self.lr,
                    "quantizer_lr": self.quantizer_lr, "clip_length": self.clip_length, **losses,
                    "distill_mask": self.losses.distill_mask, "distill_features": self.losses.distill_features}
        clash = sorted(set(self.options) & set(settings))
        if clash:
            raise ValueError(f"set {', '.join(clash)} directly in the training section, not in options")
        return TrainConfig.from_dict({**settings, **self.options, **overrides})


class Output(_Strict):
    format: Literal["safetensors", "pt"] = "safetensors"
    scale_dtype: Optional[Literal["bfloat16", "float16", "float32"]] = "bfloat16"  # stored grids; None: weight's


class Memory(_Strict):
    """How the video predictor keeps SAM2's memory bank (``qsam2_ext.sam2.video``): memory features as
    ``bits``-bit codes with a grid per ``token`` or per ``channel``; no ``memory`` section: sam2's float bank."""

    bits: Literal[4, 8] = 8
    granularity: Literal["token", "channel"] = "token"


class RecipeSpec(_Strict):
    description: str = Field(default="", max_length=1000)
    # a packaged SAM2 by short name (sam2.1_hiera_{t,s,b+,l}, qsam2_mini): a file never names a config path (a
    # custom architecture is the caller's: `qsam2 quantize --model CONFIG`)
    model: str = Field(max_length=64)
    image_size: Optional[PositiveInt] = Field(default=None, le=4096)  # None: the config's
    defaults: Quant = Field(default_factory=Quant)
    rules: list[Rule] = Field(min_length=1)
    calibration: Calibration = Field(default_factory=Calibration)
    training: Training = Field(default_factory=Training)
    output: Output = Field(default_factory=Output)
    memory: Optional[Memory] = None  # the video predictor's memory bank; None: float, as sam2 keeps it

    @field_validator("model")
    @classmethod
    def _packaged(cls, value: str) -> str:
        from qsam2_ext.sam2.models import packaged_name

        return packaged_name(value)
