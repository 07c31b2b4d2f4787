"""Saving and loading quantized SAM2 state dicts: ``torch.save`` / ``torch.load(weights_only=True)`` and
torchao's safetensors support, written atomically.

A packed weight describes itself (codes, grids, bits, activation grid), so a quantized checkpoint loads into a
freshly built *float* model: ``load_state_dict(sd, assign=True)`` swaps each float weight for its packed tensor
(the shapes match), which is what applying the same configs and then loading would give, without re-quantizing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from qsam2_ext.checkpoint import (check_file, check_state_dict, load_torch, parse_json_metadata, read_checkpoint,
                                  safetensors_metadata)
from qsam2_ext.errors import BadFileError, describe
from qsam2_ext.io import atomic_write

from .packed_tensor import QSAM2PackedTensor

PathLike = Union[str, os.PathLike]
_PREFIX = "model."
_METADATA = "qsam2_ext"  # JSON metadata (qsam2 quantize: the packaged model's name, image size, recipe)


def _register_safetensors() -> None:
    from torchao.prototype.safetensors import safetensors_utils as utils

    if QSAM2PackedTensor.__name__ not in utils.ALLOWED_TENSORS_SUBCLASSES:
        utils.ALLOWED_TENSORS_SUBCLASSES.append(QSAM2PackedTensor.__name__)
    utils.ALLOWED_CLASSES[QSAM2PackedTensor.__name__] = QSAM2PackedTensor


def save_quantized(model_or_state_dict: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike, *,
                   metadata: Optional[dict] = None) -> Path:
    """Write a quantized state dict: ``.safetensors`` through torchao's safetensors support, anything else as
    ``torch.save({"model": state_dict})`` (SAM2's official checkpoint layout). The file appears atomically.

    ``metadata`` (JSON-able, at most 64 KiB) is stored with it; ``qsam2_ext.load_quantized(path)`` builds the
    packaged SAM2 it names (``qsam2_ext.sam2.artifact.ArtifactInfo``)."""
    meta = json.dumps(metadata or {})  # fails before writing if not JSON-able
    parse_json_metadata(meta, os.fspath(path))  # and if it could not be read back
    if isinstance(model_or_state_dict, nn.Module):
        _check_not_unwrapped(model_or_state_dict)
        sd = model_or_state_dict.state_dict()
    else:
        sd = dict(model_or_state_dict)
    sd = {k: v.detach() for k, v in sd.items()}
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

        _register_safetensors()
        # keys live under "model." like the official checkpoints' "model" entry (torchao's flattening also needs
        # a "." in every key, and SAM2Base has top-level parameters such as "no_mem_embed")
        tensors, layout = flatten_tensor_state_dict({_PREFIX + k: v for k, v in sd.items()})
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={**layout, _METADATA: meta}))
    else:
        atomic_write(path, lambda tmp: torch.save({"model": sd, _METADATA: meta}, tmp))
    return path


def _check_not_unwrapped(model: nn.Module) -> None:
    """A model passed through torchao's ``unwrap_tensor_subclass`` (done before ``torch.compile``) keeps its packed
    weights as parametrization pieces under other keys, which no float model would load: refuse to save it."""
    from torch.nn.utils import parametrize
    from torchao.utils import UnwrapTensorSubclass

    for name, module in model.named_modules():
        if parametrize.is_parametrized(module) and any(
                isinstance(p, UnwrapTensorSubclass) for plist in module.parametrizations.values() for p in plist):
            raise ValueError(f"{name or 'the model'} went through torchao's unwrap_tensor_subclass (for "
                             "torch.compile): save the quantized model before unwrapping it")


def read_metadata(path: PathLike) -> dict:
    """The ``metadata`` a file was saved with by ``save_quantized`` ({} if none), as plain JSON data (bounded in size
    and depth). Reading it runs nothing: acting on it is the caller's business (see ``qsam2_ext.sam2.artifact``)."""
    path = check_file(path)
    if path.endswith(".safetensors"):
        text = safetensors_metadata(path).get(_METADATA)
    else:
        ckpt = load_torch(path)
        text = ckpt.get(_METADATA) if isinstance(ckpt, dict) else None
    return parse_json_metadata(text, path)


def read_quantized(path: PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a file written by ``save_quantized`` (or any official-layout checkpoint)."""
    path = check_file(path)
    if not path.endswith(".safetensors"):
        return dict(read_checkpoint(path))
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    metadata = safetensors_metadata(path)  # a one-line error for an empty, truncated or foreign file
    _register_safetensors()
    try:
        sd, leftover = unflatten_tensor_state_dict(load_file(path), metadata)
    except Exception as e:  # noqa: BLE001 - torchao / safetensors raise many kinds for a damaged layout
        raise BadFileError(path, f"its tensors cannot be reassembled ({describe(e, 160)})") from None
    if leftover:
        raise BadFileError(path, f"{len(leftover)} tensors could not be reassembled: {sorted(leftover)[:5]}")
    if not all(isinstance(k, str) and k.startswith(_PREFIX) for k in sd):
        raise BadFileError(path, f"not written by qsam2_ext.save_quantized (keys outside '{_PREFIX}')")
    return {k[len(_PREFIX):]: v for k, v in sd.items()}


def load_into(model: nn.Module, checkpoint: Union[PathLike, Mapping[str, torch.Tensor]]) -> nn.Module:
    """Load a quantized checkpoint (path or state dict) into a freshly built float ``model``, in place.

    Keys and shapes must match exactly (a checkpoint of another config fails, listing them, before anything is
    loaded); each float weight is swapped for its packed tensor (``load_state_dict(assign=True)``)."""
    sd = dict(checkpoint) if isinstance(checkpoint, Mapping) else read_quantized(checkpoint)
    check_state_dict(model, sd, "checkpoint" if isinstance(checkpoint, Mapping) else os.fspath(checkpoint))
    model.load_state_dict(sd, strict=True, assign=True)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(param, QSAM2PackedTensor) and param.requires_grad:
                setattr(module, name, nn.Parameter(param.detach(), requires_grad=False))
    return model


def load_quantized(model: nn.Module, checkpoint: Union[PathLike, Mapping[str, torch.Tensor]]) -> nn.Module:
    """``load_into(model, checkpoint)``: the model is the caller's. ``qsam2_ext.load_quantized(path)`` (the SAM2
    layer) also builds a packaged SAM2 named by a file's metadata."""
    if not isinstance(model, nn.Module):
        raise TypeError("the torchao adapter's load_quantized(model, checkpoint) needs a model: use "
                        "qsam2_ext.load_quantized(path) to build the SAM2 a file names")
    return load_into(model, checkpoint)


def storage_report(model: nn.Module) -> dict:
    """Bytes of packed weights (codes + grids) against the same weights in bf16, and of the whole model."""
    packed = packed_bf16 = total = 0
    for t in model.state_dict().values():
        if isinstance(t, QSAM2PackedTensor):
            packed += t.storage_bytes()
            packed_bf16 += t.numel() * 2
            total += t.storage_bytes()
        else:
            total += t.numel() * t.element_size()
    return {"packed_bytes": packed, "packed_as_bf16_bytes": packed_bf16, "model_bytes": total,
            "packed_ratio_vs_bf16": packed / packed_bf16 if packed_bf16 else None}


__all__ = ["load_into", "load_quantized", "read_metadata", "read_quantized", "save_quantized", "storage_report"]
