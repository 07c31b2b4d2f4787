"""A loaded recipe and its resolution against a model: one ``LayerPlan`` per quantization target.

Targets are SAM2's Linear and 1x1 Conv2d layers (``qsam2_ext.core.is_linear_like``: what VRC calibrates and the
packed format stores; the 7x7 patch embedding, depthwise and transposed convs are never targets). Rules are tried
in order and the first that matches a layer's name decides (torchao's ``FqnToConfig`` semantics); a layer no rule
matches stays in float.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Optional

from pydantic import ValidationError
from torch import nn

from qsam2_ext.core import effective_group_size, is_linear_like

from .schema import REGEX_PREFIX, Quant, RecipeSpec, matches
from .source import Located, RecipeError, field_name

# Calibration forwards are image forwards (``SAM2Base.forward_image``): VRC can only observe these layers.
VRC_SCOPE = ("image_encoder.", "sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1")
# Layers image-mode QAT never runs, so their activation statistics would stay empty (convert refuses them):
# the memory path runs only on video clips, the prompt encoder's mask branch only with mask prompts.
NOT_IN_IMAGE_QAT = ("memory_attention.", "memory_encoder.", "obj_ptr_tpos_proj", "sam_prompt_encoder.mask_downscaling.")
DEFAULT_METHOD = "lsc"


@dataclass(frozen=True)
class LayerPlan:
    """What a recipe does to one target layer (framework-neutral: plain values only)."""

    fqn: str
    module_type: str  # "Linear" or "Conv2d" (1x1)
    in_features: int
    out_features: int
    rule: Optional[int]  # index into Recipe.spec.rules; None: no rule matched (float)
    skip: bool  # stays in float (a skip rule, or no rule)
    note: Optional[str] = None
    method: Optional[str] = None
    bits: Optional[int] = None
    act_bits: Optional[int] = None
    group_size: Optional[int] = None  # as requested
    effective_group_size: Optional[int] = None  # None: per output channel (also the fallback when it won't divide)
    alpha_init: Optional[float] = None
    act_alpha_init: Optional[float] = None
    momentum: Optional[float] = None
    act_per_channel: bool = False
    vrc: bool = False  # calibrated with VRC before quantization

    def quant_options(self) -> dict:
        """Keyword arguments of ``qsam2_config`` / ``QSAM2Config`` (without ``step`` and ``scale_dtype``)."""
        return {k: getattr(self, k) for k in _QUANT_FIELDS}


_QUANT_FIELDS = ("method", "bits", "act_bits", "group_size", "alpha_init", "act_alpha_init", "momentum",
                 "act_per_channel")


def _settings(spec: RecipeSpec, rule_index: int) -> dict:
    """A rule's effective quantization settings: its own fields over ``defaults``, with None meaning unset."""
    merged = {**spec.defaults.model_dump(), **spec.rules[rule_index].quant_fields()}
    merged["method"] = merged["method"] or DEFAULT_METHOD
    merged["act_per_channel"] = bool(merged["act_per_channel"])
    return {k: merged[k] for k in _QUANT_FIELDS}


class Recipe:
    """A validated recipe (``load_recipe``); ``resolve(model)`` checks it against a model."""

    def __init__(self, name: str, source: Located, path: Optional[str] = None):
        self.name, self.source = name, source
        self.path = path or source.where(())[0]
        try:
            self.spec = RecipeSpec.model_validate(source.data)
        except ValidationError as e:
            raise _first_error(source, e) from None
        self._check_settings()

    def __repr__(self) -> str:
        return f"Recipe({self.name!r}, model={self.spec.model!r}, {len(self.spec.rules)} rules)"

    def error(self, path, message: str) -> RecipeError:
        return self.source.error(path, message)

    def _check_settings(self) -> None:
        """Every non-skip rule must make a valid quantizer: ``QSAM2Config`` is the one judge of combinations."""
        from qsam2_ext.integrations.torchao.configs import QSAM2Config

        for i, rule in enumerate(self.spec.rules):
            if rule.skip:
                continue
            settings = _settings(self.spec, i)
            if settings["bits"] is None:
                raise self.error(("rules", i, "bits"), "bits is set neither in this rule nor in defaults")
            try:
                QSAM2Config(**settings)
            except ValueError as e:
                raise self.error(("rules", i), str(e)) from None
        try:
            self.spec.training.train_config()
        except ValueError as e:
            raise self.error(("training",), str(e)) from None

    # -- resolution ------------------------------------------------------------------------------------------

    def resolve(self, model: nn.Module, *, qat: Optional[bool] = None) -> list[LayerPlan]:
        """One plan per target layer of ``model``, in module order; raises ``RecipeError`` (file, line, field)
        for a rule or calibration pattern that matches nothing (unless ``optional``) or names a non-target, and
        for static activation quantization of layers QAT would not run. Nothing is modified.

        ``qat``: whether QAT will run (default: ``training.steps > 0``)."""
        modules = dict(model.named_modules())
        targets = {name: m for name, m in modules.items() if is_linear_like(m)}
        rules = self.spec.rules
        hits = [[n for n in targets if matches(r.match, n)] for r in rules]
        for i, (rule, matched) in enumerate(zip(rules, hits)):
            if not matched and not rule.optional:
                raise self.error(("rules", i, "match"), _no_match(rule.match, modules, targets))
        owner = {}
        for i, matched in enumerate(hits):
            for name in matched:
                owner.setdefault(name, i)  # first match wins
        plans = {name: self._plan(name, m, owner.get(name)) for name, m in targets.items()}
        self._check_vrc(plans, modules, targets)
        qat = self.spec.training.steps > 0 if qat is None else qat
        if qat and self.spec.training.clip_length == 1:
            for p in plans.values():
                if not p.skip and p.act_bits is not None and p.fqn.startswith(NOT_IN_IMAGE_QAT):
                    raise self.error(("rules", p.rule), (
                        f"{p.fqn} quantizes activations, but image-mode QAT never runs it, so its activation "
                        "statistics would stay empty: set act_bits: null for it, or train on video "
                        "(training.clip_length > 1)"))
        return list(plans.values())

    def _plan(self, name: str, module: nn.Module, rule: Optional[int]) -> LayerPlan:
        weight = module.weight
        base = dict(fqn=name, module_type=type(module).__name__, in_features=weight[0].numel(),
                    out_features=weight.shape[0], rule=rule)
        if rule is None:
            return LayerPlan(**base, skip=True, note="no rule matches")
        spec_rule = self.spec.rules[rule]
        if spec_rule.skip:
            return LayerPlan(**base, skip=True, note=spec_rule.note)
        settings = _settings(self.spec, rule)
        return LayerPlan(**base, skip=False, note=spec_rule.note, **settings,
                         effective_group_size=effective_group_size(base["in_features"], settings["group_size"]))

    def _check_vrc(self, plans: dict, modules: dict, targets: dict) -> None:
        calibration = self.spec.calibration
        if not calibration.vrc:
            return
        for j, pattern in enumerate(calibration.layers):
            path = ("calibration", "layers", j)
            matched = [n for n in targets if matches(pattern, n)]
            if not matched:
                raise self.error(path, _no_match(pattern, modules, targets))
            outside = [n for n in matched if not n.startswith(VRC_SCOPE)]
            if outside:
                raise self.error(path, f"VRC calibrates on image forwards, which do not run {outside[0]} "
                                       f"(and {len(outside) - 1} more); keep VRC to image_encoder.*")
            for n in matched:
                if not plans[n].skip:
                    plans[n] = dataclasses.replace(plans[n], vrc=True)
            if not any(plans[n].vrc for n in matched):
                raise self.error(path, "matches only layers the rules leave in float: VRC would change float "
                                       "weights for nothing")

    # -- compilation to torchao --------------------------------------------------------------------------

    def to_torchao(self, model: nn.Module, step: Optional[str] = None, plans: Optional[list[LayerPlan]] = None):
        """``FqnToConfig`` of ``QSAM2Config`` per quantized layer (exact names: the recipe's resolution is the one
        source of truth). Layers with equal settings share one config object, so a convert checks them together.
        Apply with ``quantize_(model, config, filter_fn=None)``."""
        import torch
        from torchao.quantization import FqnToConfig

        from qsam2_ext.integrations.torchao.configs import QSAM2Config

        plans = self.resolve(model) if plans is None else plans
        dtype = self.spec.output.scale_dtype
        scale_dtype = None if dtype is None else getattr(torch, dtype)
        shared: dict = {}
        mapping = {}
        for p in plans:
            if not p.skip:
                key = tuple(p.quant_options().items())
                if key not in shared:
                    shared[key] = QSAM2Config(**p.quant_options(), step=step, scale_dtype=scale_dtype)
                mapping[p.fqn] = shared[key]
        return FqnToConfig(mapping)

    def vrc_to_torchao(self, model: nn.Module, step: str, plans: Optional[list[LayerPlan]] = None):
        """``FqnToConfig`` of one ``VRCConfig(step, lam_rel)`` over the layers to calibrate (None: no VRC)."""
        from torchao.quantization import FqnToConfig

        from qsam2_ext.integrations.torchao.configs import VRCConfig

        plans = self.resolve(model) if plans is None else plans
        layers = [p.fqn for p in plans if p.vrc]
        if not layers:
            return None
        config = VRCConfig(step=step, lam_rel=self.spec.calibration.lam_rel)
        return FqnToConfig({name: config for name in layers})


def _first_error(source: Located, error: ValidationError) -> RecipeError:
    first = error.errors()[0]
    path = tuple(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        parent = tuple(first["loc"][:-1])
        message = "unknown field"
        known = _known_fields(parent)
        if known:
            close = difflib.get_close_matches(str(path[-1]), known, n=1)
            message += f" (did you mean {close[0]!r}?)" if close else f"; known fields: {', '.join(known)}"
    elif first["type"] == "missing":
        message = "required field is missing"
    more = len(error.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return source.error(path, message)


def _known_fields(parent: tuple) -> list[str]:
    model = RecipeSpec
    for part in parent:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        model = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, Quant.__base__)), None)
        if model is None:
            return []
    return sorted(model.model_fields)


def _no_match(pattern: str, modules: dict, targets: dict) -> str:
    if not pattern.startswith(REGEX_PREFIX) and pattern in modules:
        module = modules[pattern]
        return (f"{pattern} is a {type(module).__name__}, not a quantization target (nn.Linear or 1x1 Conv2d); "
                "a container's layers are matched with 're:'")
    hint = ""
    if not pattern.startswith(REGEX_PREFIX):
        close = difflib.get_close_matches(pattern, list(targets), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"matches no layer of the model{hint}; mark the rule 'optional: true' if that is intended"


__all__ = ["LayerPlan", "Recipe", "field_name"]
