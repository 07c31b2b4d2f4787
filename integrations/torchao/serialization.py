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

from qsam2_ext.io import atomic_write
from qsam2_ext.sam2.models import check_state_dict, read_checkpoint

from .packed_tensor import QSAM2PackedTensor

PathLike = Union[str, os.PathLike]
_PREFIX = "model."
_METADATA = "qsam2_ext"  # how to rebuild the float model: {"model": config, "image_size": ..., "overrides": [...]}


def _register_safetensors() -> None:
    from torchao.prototype.safetensors import safetensors_utils as utils

    if QSAM2PackedTensor.__name__ not in utils.ALLOWED_TENSORS_SUBCLASSES:
        utils.ALLOWED_TENSORS_SUBCLASSES.append(QSAM2PackedTensor.__name__)
    utils.ALLOWED_CLASSES[QSAM2PackedTensor.__name__] = QSAM2PackedTensor


def save_quantized(model_or_state_dict: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike, *,
                   metadata: Optional[dict] = None) -> Path:
    """Write a quantized state dict: ``.safetensors`` through torchao's safetensors support, anything else as
    ``torch.save({"model": state_dict})`` (SAM2's official checkpoint layout). The file appears atomically.

    ``metadata`` (JSON-able) is stored with it; with the SAM2 config under ``"model"`` (and ``"image_size"``,
    ``"overrides"``), ``load_quantized(path)`` rebuilds the model by itself."""
    meta = json.dumps(metadata or {})  # fails before writing if not JSON-able
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
    """The ``metadata`` a file was saved with by ``save_quantized`` ({} if none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get(_METADATA)
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        text = ckpt.get(_METADATA) if isinstance(ckpt, dict) else None
    return json.loads(text) if text else {}


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
    return read_checkpoint(str(path))


def load_quantized(model_or_path: Union[nn.Module, PathLike],
                   checkpoint: Optional[Union[PathLike, Mapping[str, torch.Tensor]]] = None, *,
                   video: bool = False, device: str = "cpu") -> nn.Module:
    """A quantized SAM2, ready for ``SAM2ImagePredictor`` (or, with ``video=True``, a ``SAM2VideoPredictor``).

    >>> model = load_quantized("sam2.1_hiera_t_w2a8.safetensors")      # written by `qsam2 quantize`
    >>> model = load_quantized(build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None), "q.safetensors")

    With a path alone, the model is built from the SAM2 config stored in the file's metadata. With a freshly
    built float model and a checkpoint (path or state dict), that model is loaded in place. Keys and shapes must
    match exactly (a checkpoint of another config fails, listing them, before anything is loaded).
    """
    if isinstance(model_or_path, nn.Module):
        if checkpoint is None:
            raise TypeError("load_quantized(model, checkpoint): the checkpoint is missing")
        model = model_or_path
    else:
        if checkpoint is not None:
            raise TypeError("load_quantized(path) or load_quantized(model, checkpoint), not (path, checkpoint)")
        checkpoint = model_or_path
        meta = read_metadata(checkpoint)
        if "model" not in meta:
            raise ValueError(f"{checkpoint} does not name its SAM2 config (not written by qsam2 quantize): "
                             "use load_quantized(build_model(CONFIG), path)")
        from qsam2_ext.sam2.models import build_model

        model = build_model(meta["model"], video=video, image_size=meta.get("image_size"),
                            overrides=meta.get("overrides", ()))
    sd = dict(checkpoint) if isinstance(checkpoint, Mapping) else read_quantized(checkpoint)
    check_state_dict(model, sd, "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint))
    model.load_state_dict(sd, strict=True, assign=True)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(param, QSAM2PackedTensor) and param.requires_grad:
                setattr(module, name, nn.Parameter(param.detach(), requires_grad=False))
    return model if isinstance(model_or_path, nn.Module) else model.to(device)


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


__all__ = ["load_quantized", "read_metadata", "read_quantized", "save_quantized", "storage_report"]
