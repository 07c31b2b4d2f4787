"""Inference weights and save/restore.

``bake`` freezes every Q-SAM2 weight fake quantizer into a ``QSAM2WeightDecompressor``: the parameter then holds
the integer codes (two per byte with NNCF's int4 packing up to 4 bits, int8 at 8) and the hook returns their grid
values, so the baked model computes exactly what the trained fake-quantized one did. In torch the codes are
decompressed on every call (a storage format, not a speed-up). ``export_openvino`` turns them into OpenVINO integer
constants (``u2`` / ``i4`` / ``i8``) with the decompression pattern of NNCF's ``compress_weights``; a plain
``ov.convert_model`` of a baked model would instead fold the decompression into float constants.
Activation quantizers stay (in eval mode they use their learned static clip); ``export_openvino`` exports them as
``FakeQuantize``.

Save/restore is NNCF's own: ``nncf.torch.get_config(model)`` + ``state_dict``; ``restore`` wraps
``nncf.torch.load_from_config(..., allowed_modules=ALLOWED_MODULES)`` and re-shapes baked parameters before
loading the state dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import _nncf as N
from .hooks import QSAM2FakeQuantize, QSAM2WeightDecompressor, decompressor_for

ALLOWED_MODULES = ("nncf.*", "qsam2_ext.integrations.nncf.*")


def _parameter_slot(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    owner, _, attr = name.rpartition(".")
    return model.get_submodule(owner) if owner else model, attr


@torch.no_grad()
def bake(model: nn.Module) -> dict[str, str]:
    """Freeze Q-SAM2 weight quantizers of an NNCF-wrapped model into decompressors, in place (eval mode).
    Returns ``{parameter: storage description}``. All grids are computed before the first parameter changes."""
    storage = N.get_hook_storage(model)
    params = dict(model.named_parameters())
    planned = []
    for name, hook in storage.named_hooks():
        if isinstance(hook, QSAM2FakeQuantize) and hook.is_weight:
            hook_type, target, _ = N.decode_hook_name(name)
            if hook_type != "post_hooks" or target not in params:
                raise ValueError(f"{name}: a Q-SAM2 weight quantizer must be a post-hook on a parameter")
            planned.append((name, target, *decompressor_for(hook, params[target])))
    if not planned:
        raise ValueError("the model has no Q-SAM2 weight quantizer to bake")
    baked = {}
    for name, target, decompressor, stored in planned:
        owner, attr = _parameter_slot(model, target)
        setattr(owner, attr, nn.Parameter(stored, requires_grad=False))
        storage.delete_hook(name)
        storage.insert_hook_by_name(name, decompressor)
        baked[target] = f"{decompressor.bits}-bit codes as {tuple(stored.shape)} {stored.dtype}"
    return baked


def save(model: nn.Module) -> dict[str, Any]:
    """``{"config": nncf.torch.get_config(model), "state_dict": ...}``: what ``restore`` needs with a fresh model."""
    return {"config": N.get_config(model), "state_dict": model.state_dict()}


def restore(model: nn.Module, checkpoint: dict[str, Any]) -> nn.Module:
    """A freshly built float ``model`` with the saved hooks (NNCF's, Q-SAM2's fake quantizers or decompressors)
    and state, in place. Keys and shapes are checked by ``load_state_dict(strict=True)``."""
    model = N.load_from_config(model, checkpoint["config"], allowed_modules=ALLOWED_MODULES)
    state = checkpoint["state_dict"]
    for name, hook in N.get_hook_storage(model).named_hooks():
        if isinstance(hook, QSAM2WeightDecompressor):
            _, target, _ = N.decode_hook_name(name)
            if target not in state:
                raise KeyError(f"checkpoint has no stored codes for {target}")
            owner, attr = _parameter_slot(model, target)
            setattr(owner, attr, nn.Parameter(torch.empty_like(state[target]), requires_grad=False))
    model.load_state_dict(state, strict=True)
    return model
