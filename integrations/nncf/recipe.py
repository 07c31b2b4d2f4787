"""``quantize_with_recipe``: a Q-SAM2 recipe (``qsam2_ext.recipes``) applied through NNCF.

The recipe is resolved against the whole SAM2 model exactly as for torchao (same ``LayerPlan``s, same errors for
rules that match nothing); its plans then map to NNCF: VRC layers and ``calibration.lam_rel`` to a
``VRCAlgorithm`` step in front of NNCF's PTQ pipeline (``calibration.images`` as its subset size), each
quantized layer's settings to Q-SAM2 hooks on that layer's weight and input ports.
"""

from __future__ import annotations

import copy
from typing import Sequence, Union

import torch
from torch import nn

from qsam2_ext.core import LayerQuant, observing

from . import _nncf as N
from .pipeline import _set_submodule, call, nncf_ptq
from .qat import attach_qsam2
from .vrc import VRCAlgorithm


def quantize_with_recipe(model: nn.Module, recipe, calibration_dataset: Union["N.Dataset", Sequence[torch.Tensor]],
                         *, submodule: str = "image_encoder", outside: str = "error", keep_nncf: bool = False,
                         **nncf_options) -> nn.Module:
    """A copy of SAM2 ``model`` whose ``submodule`` is NNCF-quantized (VRC, NNCF PTQ, Q-SAM2 hooks per the
    recipe), ready for QAT; ``model`` itself is not modified.

    ``recipe``: a ``Recipe``, a shipped name or a YAML path. ``calibration_dataset``: an ``nncf.Dataset`` or a
    sequence of image batches for ``submodule``. NNCF traces ``submodule`` alone, so layers the recipe quantizes
    elsewhere (mask decoder, memory path) are an error, or stay float with ``outside="float"``.
    ``keep_nncf``: keep NNCF's quantizers on tensors Q-SAM2 does not quantize (attention matmuls, adds, ...). Off
    by default: their op-counter keys shift under TorchScript tracing on SAM2, so such a model does not export to
    OpenVINO (``export_openvino`` refuses it).
    ``nncf_options`` go to NNCF's PTQ pipeline (``model_type``, ``preset``, ``ignored_scope``, ...).
    """
    from qsam2_ext.recipes import Recipe, load_recipe

    if outside not in ("error", "float"):
        raise ValueError(f"outside must be 'error' or 'float', got {outside!r}")
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    plans = [p for p in recipe.resolve(model) if not p.skip]
    prefix = submodule + "."
    elsewhere = [p.fqn for p in plans if not p.fqn.startswith(prefix)]
    if elsewhere and outside == "error":
        raise ValueError(f"recipe {recipe.name} quantizes {len(elsewhere)} layer(s) outside {submodule}, which NNCF "
                         f"cannot trace with image batches: {elsewhere[:3]}...; pass outside='float' to keep them "
                         "in float, or quantize them with the torchao path")
    inside = {p.fqn[len(prefix):]: p for p in plans if p.fqn.startswith(prefix)}
    if not inside:
        raise ValueError(f"recipe {recipe.name} quantizes no layer of {submodule}")
    quantized = quantize_layers(model.get_submodule(submodule), inside, calibration_dataset, recipe.spec.calibration,
                                keep_nncf=keep_nncf, **nncf_options)
    result = copy.deepcopy(model)
    _set_submodule(result, submodule, quantized)
    return result


def quantize_layers(module: nn.Module, plans: dict, calibration_dataset, calibration, *, keep_nncf: bool = False,
                    **nncf_options) -> nn.Module:
    """An NNCF-quantized copy of ``module`` with Q-SAM2 hooks on ``plans`` (module name relative to ``module`` ->
    ``LayerPlan``): VRC on the plans marked for it (``calibration.lam_rel``, ``calibration.images``), NNCF's PTQ
    pipeline, Q-SAM2 hooks, then LSC's activation statistics from the first ``calibration.images`` items.
    ``calibration_dataset``: an ``nncf.Dataset`` or a sequence of items, each what ``module`` takes (a tensor, a
    tuple of positional arguments or a dict of keyword arguments, as NNCF's torch engine calls it)."""
    layers = {fqn: LayerQuant(**p.quant_options()) for fqn, p in plans.items()}
    dataset = (calibration_dataset if isinstance(calibration_dataset, N.Dataset)
               else N.Dataset(list(calibration_dataset)))
    vrc_layers = {fqn for fqn, p in plans.items() if p.vrc}
    vrc = None
    if vrc_layers:
        vrc = VRCAlgorithm(calibration.lam_rel, select=lambda fqn, m: fqn in vrc_layers, subset_size=calibration.images)
    quantized = nncf_ptq(module, dataset, vrc, **nncf_options)
    example = next(iter(dataset.get_inference_data()))
    attach_qsam2(quantized, example, layers, keep_nncf=keep_nncf)
    with observing(quantized), torch.no_grad():  # LSC activation statistics from the calibration data
        for i, item in enumerate(dataset.get_inference_data()):
            if i >= calibration.images:
                break
            call(quantized, item)
    return quantized
