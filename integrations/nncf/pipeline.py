"""Whole-model entry points: Q-SAM2 or NNCF's own QAT on a SAM2 model's image encoder through NNCF, ready for the
shared training loop (``qsam2_ext.train.train``), and the conversion for evaluation.

NNCF traces a module's ``forward`` with one example input, and only the image encoder runs on images alone
(``SAM2Base.forward`` is not an inference entry point), so the NNCF pipeline runs on ``model.image_encoder``: it is
replaced in place by its NNCF-quantized copy (``nncf.quantize`` copies the model it quantizes).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from qsam2_ext.core import DEFAULT_LAM_REL, LayerQuant, is_linear_like, observing

from . import _nncf as N
from .bake import bake, restore, save
from .qat import attach_qsam2, retarget_nncf
from .vrc import VRCAlgorithm

METHODS = ("nncf", "qsam2")
Filter = Callable[[nn.Module, str], bool]  # torchao's filter_fn order: (module, fully qualified name)


def image_encoder_layers(module: nn.Module, fqn: str) -> bool:
    """The accuracy benchmark's targets: every Linear and 1x1 Conv2d of the image encoder."""
    return fqn.startswith("image_encoder.") and is_linear_like(module)


def call(module: nn.Module, item):
    """``module`` on one calibration item as NNCF's torch engine calls it: a tuple as positional arguments, a dict
    as keyword arguments, anything else as the one argument."""
    if isinstance(item, dict):
        return module(**item)
    return module(*item) if isinstance(item, tuple) else module(item)


def nncf_ptq(module: nn.Module, dataset, vrc: Optional[VRCAlgorithm] = None, **nncf_options) -> nn.Module:
    """``nncf.quantize`` of a copy of ``module`` (NNCF's PTQ pipeline: MinMax + fast bias correction), with VRC as
    the first pipeline step when given. ``nncf_options`` go to NNCF's ``create_ptq_pipeline`` (``model_type``,
    ``preset``, ``target_device``, ``ignored_scope``, ``subset_size``, ``advanced_parameters``)."""
    wrapper = N.GraphModelWrapper(N.wrap_model(copy.deepcopy(module)), next(iter(dataset.get_inference_data())))
    steps = N.create_ptq_pipeline(**nncf_options).pipeline_steps
    return N.Pipeline(([[vrc]] if vrc is not None else []) + steps).run(wrapper, dataset).model


def prepare_nncf_qat(model: nn.Module, calibration_batches: Sequence[torch.Tensor], bits: int,
                     act_bits: Optional[int], method: str = "qsam2", target: Filter = image_encoder_layers,
                     lam_rel: float = DEFAULT_LAM_REL, keep_nncf: bool = False, submodule: str = "image_encoder",
                     **options) -> nn.Module:
    """Quantize ``model.<submodule>`` through NNCF for QAT, in place; returns ``model`` (train it with
    ``qsam2_ext.train.train``, then call ``finish_nncf_qat``).

    * ``method="nncf"``: NNCF's own QAT. ``nncf.quantize`` (8-bit min-max), then NNCF's quantizers of the target
      layers' weights are set to ``bits`` and those feeding their inputs to ``act_bits`` (NNCF's 2/4-bit
      convention: signed, full range; ranges learned by NNCF's gradient).
    * ``method="qsam2"``: VRC (``lam_rel``) as the first step of NNCF's PTQ pipeline, then LSC hooks on the
      target layers (``options``: ``alpha_init``, ``act_alpha_init``, ``momentum``, ``group_size``,
      ``act_per_channel``), activation statistics initialised on the calibration batches.

    ``keep_nncf=False`` (default) removes NNCF's quantizers on every other tensor, so the rows quantize the same
    tensors as the torchao rows (target weights and inputs).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    encoder = model.get_submodule(submodule)
    prefix = submodule + "."
    select = lambda fqn, m: target(m, prefix + fqn)  # noqa: E731
    if not any(select(n, m) for n, m in encoder.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))):
        raise ValueError(f"target selects no Linear/Conv2d layer of {submodule}")
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("calibration_batches is empty")
    dataset = N.Dataset(batches)
    if method == "qsam2":
        config = LayerQuant(bits=bits, act_bits=act_bits, method="lsc", **options)
        vrc = VRCAlgorithm(lam_rel, select=lambda fqn, m: select(fqn, m) and is_linear_like(m))
        quantized = nncf_ptq(encoder, dataset, vrc, subset_size=len(batches))
        layers = {n: config for n, m in quantized.named_modules()
                  if isinstance(m, (nn.Linear, nn.Conv2d)) and select(n, m)}
        attach_qsam2(quantized, batches[0], layers, keep_nncf=keep_nncf)
        with observing(quantized), torch.no_grad():
            for images in batches:
                quantized(images)
    else:
        if options:
            raise ValueError(f"options {sorted(options)} apply to method='qsam2' only")
        LayerQuant(bits=bits, act_bits=act_bits)  # the same bit-width validation as every other row
        quantized = nncf_ptq(encoder, dataset, subset_size=len(batches))
        retarget_nncf(quantized, batches[0], select, bits, act_bits, keep_nncf=keep_nncf)
    _set_submodule(model, submodule, quantized)
    return model


def finish_nncf_qat(model: nn.Module, submodule: str = "image_encoder") -> nn.Module:
    """After training: Q-SAM2 weight quantizers baked into integer codes (``bake``); NNCF's own quantizers stay
    as its fake quantizers (what OpenVINO runs as ``FakeQuantize``). Eval mode; returns ``model``."""
    encoder = model.get_submodule(submodule)
    if any(True for _ in _qsam2_weight_hooks(encoder)):
        bake(encoder)
    return model.eval()


def transplant(source: nn.Module, target: nn.Module, submodule: str = "image_encoder") -> nn.Module:
    """Copy a model prepared here into a freshly built float ``target`` (e.g. the video predictor of the same
    config) through NNCF's save/restore: ``get_config`` + state dict of the encoder, everything else loaded
    strictly. Returns ``target``."""
    encoder = restore(target.get_submodule(submodule), save(source.get_submodule(submodule)))
    _set_submodule(target, submodule, encoder)
    prefix = submodule + "."
    rest = {k: v for k, v in source.state_dict().items() if not k.startswith(prefix)}
    missing, unexpected = target.load_state_dict(rest, strict=False)
    missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise ValueError(f"models differ outside {submodule}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return target


def _qsam2_weight_hooks(module):
    from .hooks import QSAM2FakeQuantize

    return (h for _, h in N.get_hook_storage(module).named_hooks() if isinstance(h, QSAM2FakeQuantize) and h.is_weight)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, module)
