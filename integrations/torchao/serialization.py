"""Saving and loading quantized SAM2 state dicts: ``torch.save`` / ``torch.load(weights_only=True)`` and
torchao's safetensors support, written atomically.

A packed weight describes itself (codes, grids, bits, activation grid), so a quantized checkpoint loads into a
freshly built *float* model: ``load_state_dict(sd, assign=True)`` swaps each float weight for its packed tensor
(the shapes match), which is what applying the same configs and then loading would give, without re-quantizing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import nn

from qsam2_ext.io import atomic_write

from .packed_tensor import QSAM2PackedTensor

PathLike = Union[str, os.PathLike]
_PREFIX = "model."


def _register_safetensors() -> None:
    from torchao.prototype.safetensors import safetensors_utils as utils

    if QSAM2PackedTensor.__name__ not in utils.ALLOWED_TENSORS_SUBCLASSES:
        utils.ALLOWED_TENSORS_SUBCLASSES.append(QSAM2PackedTensor.__name__)
    utils.ALLOWED_CLASSES[QSAM2PackedTensor.__name__] = QSAM2PackedTensor


def save_quantized(model_or_state_dict: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike) -> Path:
    """Write a quantized state dict: ``.safetensors`` through torchao's safetensors support, anything else as
    ``torch.save({"model": state_dict})`` (SAM2's official checkpoint layout). The file appears atomically."""
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else dict(model_or_state_dict)
    sd = {k: v.detach() for k, v in sd.items()}
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

        _register_safetensors()
        # keys live under "model." like the official checkpoints' "model" entry (torchao's flattening also needs
        # a "." in every key, and SAM2Base has top-level parameters such as "no_mem_embed")
        tensors, metadata = flatten_tensor_state_dict({_PREFIX + k: v for k, v in sd.items()})
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    else:
        atomic_write(path, lambda tmp: torch.save({"model": sd}, tmp))
    return path


def read_quantized(path: PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a file written by ``save_quantized`` (or any official-layout checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

        _register_safetensors()
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        sd, leftover = unflatten_tensor_state_dict(load_file(str(path)), metadata)
        if leftover:
            raise ValueError(f"{path}: {len(leftover)} tensors could not be reassembled: {sorted(leftover)[:5]}")
        if not all(k.startswith(_PREFIX) for k in sd):
            raise ValueError(f"{path} was not written by qsam2_ext.save_quantized (keys outside '{_PREFIX}')")
        return {k[len(_PREFIX):]: v for k, v in sd.items()}
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not in the official SAM2 checkpoint format (a dict with a 'model' key)")
    return ckpt["model"]


def load_quantized(model: nn.Module, checkpoint: Union[PathLike, Mapping[str, torch.Tensor]]) -> nn.Module:
    """Load a quantized checkpoint (path or state dict) into a freshly built float model, in place.

    >>> model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None)
    >>> load_quantized(model, "sam2.1_hiera_t.w2a8.safetensors")   # ready for SAM2ImagePredictor(model)

    Keys must match exactly (a checkpoint of another model config fails with the missing/unexpected keys listed,
    before anything is loaded).
    """
    sd = dict(checkpoint) if isinstance(checkpoint, Mapping) else read_quantized(checkpoint)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the model: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    model.load_state_dict(sd, strict=True, assign=True)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(param, QSAM2PackedTensor) and param.requires_grad:
                setattr(module, name, nn.Parameter(param.detach(), requires_grad=False))
    return model


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


__all__ = ["load_quantized", "read_quantized", "save_quantized", "storage_report"]
