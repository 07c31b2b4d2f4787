"""VRC through ``quantize_``, in the shape of torchao's calibration flows (``AWQConfig``, ``SmoothQuantConfig``):
``vrc_config(step="prepare")`` attaches Gram observers to Linear / 1x1 Conv2d layers (a forward pre-hook, no module
swap, so the state dict is unchanged); ``vrc_config(step="convert")`` applies the closed form to every observed
layer it is given, removes the observers, records a ``VRCReport`` and, with a ``base_config``, quantizes the layer
with it.

Model-specific padding rows (SAM2's Hiera window padding) are masked through ``qsam2_ext.core.row_masks`` while
observers are attached; this adapter knows no model.
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torchao.quantization import register_quantize_module_handler
from torchao.quantization.transform_module import _QUANTIZE_CONFIG_HANDLER

from qsam2_ext.core import GramObserver, VRCReport, apply_vrc, input_rows, is_linear_like, row_masks, weight_matrix

from .configs import VRCConfig
from .qat import check_quantizable
from .session import describe, session_for

STATE = "_qsam2_vrc"  # (observer, hook handle, session) while a layer is being calibrated
REPORT = "qsam2_vrc_report"


def _observe(layer: nn.Module, observer: GramObserver):
    def hook(module, args):
        observer.update(input_rows(module, args[0]), row_masks.row_mask(module))

    return layer.register_forward_pre_hook(hook)


def _prepare(layer: nn.Module, config: VRCConfig) -> nn.Module:
    if hasattr(layer, STATE):
        raise RuntimeError(f"{describe(layer)} already has VRC observers: convert it before preparing again")
    observer = GramObserver(weight_matrix(layer).shape[1], describe(layer))
    session = session_for(config)
    session.add(layer)
    row_masks.acquire()
    setattr(layer, STATE, (observer, _observe(layer, observer), session))
    return layer


def check(layer: nn.Module) -> None:
    """Raise if an observed layer cannot be calibrated yet (no data, non-finite statistics)."""
    getattr(layer, STATE)[0].check()


def _convert(layer: nn.Module, config: VRCConfig) -> nn.Module:
    state = getattr(layer, STATE, None)
    if state is None:
        return layer  # never observed: nothing to calibrate, and (as AWQ) nothing of base_config's to apply
    observer, handle, session = state
    session.check_all(check)
    (report,) = apply_vrc([(observer.name, layer, observer)], config.lam_rel).values()
    handle.remove()
    delattr(layer, STATE)
    session.discard(layer)
    row_masks.release()
    setattr(layer, REPORT, report)
    if config.base_config is not None:
        return _QUANTIZE_CONFIG_HANDLER[type(config.base_config)](layer, config.base_config)
    return layer


@register_quantize_module_handler(VRCConfig)
def _vrc_transform(module: nn.Module, config: VRCConfig, *, parameter_name: str = "weight") -> nn.Module:
    if not check_quantizable(module, parameter_name, "VRCConfig", bare_weights=False):
        return module
    if not is_linear_like(module):
        return module  # a 3x3 conv: its inputs are patches, not rows; never observed, so never converted either
    return _prepare(module, config) if config.step == "prepare" else _convert(module, config)


def vrc_reports(model: nn.Module) -> dict[str, VRCReport]:
    """The ``VRCReport`` of every calibrated layer of ``model``, keyed by its fully qualified name."""
    return {
        name: dataclasses.replace(getattr(m, REPORT), layer=name)
        for name, m in model.named_modules()
        if hasattr(m, REPORT)
    }
