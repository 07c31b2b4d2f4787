"""VRC through ``quantize_``: ``vrc_config(step="prepare")`` attaches Gram observers to Linear / 1x1 Conv2d
layers (a forward pre-hook, no module swap, so the state dict is unchanged); ``vrc_config(step="convert")``
applies the closed form to every observed layer it is given, removes the observers and records a ``VRCReport``.

SAM2's Hiera window padding is masked automatically while observers are attached (``qsam2_ext.sam2.hiera``).
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torchao.quantization import register_quantize_module_handler

from qsam2_ext.core import GramObserver, VRCReport, apply_vrc, input_rows, is_linear_like, weight_matrix
from qsam2_ext.sam2 import hiera

from .configs import VRCConfig
from .session import describe, session_for

_STATE = "_qsam2_vrc"  # (observer, hook handle, session) while a layer is being calibrated
REPORT = "qsam2_vrc_report"


def _observe(layer: nn.Module, observer: GramObserver):
    def hook(module, args):
        observer.update(input_rows(module, args[0]), hiera.row_mask(module))

    return layer.register_forward_pre_hook(hook)


def _prepare(layer: nn.Module, config: VRCConfig) -> nn.Module:
    if hasattr(layer, _STATE):
        raise RuntimeError(f"{describe(layer)} already has VRC observers: convert it before preparing again")
    observer = GramObserver(weight_matrix(layer).shape[1], describe(layer))
    session = session_for(config)
    session.add(layer)
    hiera.acquire()
    setattr(layer, _STATE, (observer, _observe(layer, observer), session))
    return layer


def _check(layer: nn.Module) -> None:
    getattr(layer, _STATE)[0].check()


def _convert(layer: nn.Module, config: VRCConfig) -> nn.Module:
    state = getattr(layer, _STATE, None)
    if state is None:
        return layer  # never observed: nothing to calibrate
    observer, handle, session = state
    session.check_all(_check)
    (report,) = apply_vrc([(observer.name, layer, observer)], config.lam_rel).values()
    handle.remove()
    delattr(layer, _STATE)
    session.discard(layer)
    hiera.release()
    setattr(layer, REPORT, report)
    return layer


@register_quantize_module_handler(VRCConfig)
def _vrc_transform(module: nn.Module, config: VRCConfig, *, parameter_name: str = "weight") -> nn.Module:
    if parameter_name != "weight" or not is_linear_like(module):
        return module  # a bias, or a container matched by an FqnToConfig regex
    return _prepare(module, config) if config.step == "prepare" else _convert(module, config)


def vrc_reports(model: nn.Module) -> dict[str, VRCReport]:
    """The ``VRCReport`` of every calibrated layer of ``model``, keyed by its fully qualified name."""
    return {
        name: dataclasses.replace(getattr(m, REPORT), layer=name)
        for name, m in model.named_modules()
        if hasattr(m, REPORT)
    }
