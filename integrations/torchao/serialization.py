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
from torchao.utils import TorchAOBaseTensor

from qsam2_ext.core import SUPPORTED_BITS, packed_length
from qsam2_ext.core.files import (atomic_write, check_file, check_state_dict, load_torch, parse_json_metadata,
                                  read_checkpoint, safetensors_metadata)
from qsam2_ext.errors import BadFileError, describe

from .packed_tensor import QSAM2PackedTensor

PathLike = Union[str, os.PathLike]
_PREFIX = "model."
_METADATA = "qsam2_ext"  # JSON metadata (qsam2 quantize: the packaged model's name, image size, recipe)
_PACKED = QSAM2PackedTensor.__name__
_FLOATS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _flatten(sd: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """torchao's safetensors layout for a state dict: its own tensors (and plain ones) through torchao's public
    ``flatten_tensor_state_dict``; packed tensors, which torchao's allow-list does not know, in the same layout
    (``{module}._{param}_{data}`` keys, the attributes as JSON under the tensor's name), written here."""
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    ours = {k: v for k, v in sd.items() if isinstance(v, QSAM2PackedTensor)}
    tensors, metadata = flatten_tensor_state_dict({k: v for k, v in sd.items() if k not in ours})
    names = json.loads(metadata["tensor_names"])
    for name, t in ours.items():
        module, param = name.rsplit(".", 1)
        data_names = [n for n in t.tensor_data_names + t.optional_tensor_data_names if getattr(t, n) is not None]
        for n in data_names:
            tensors[f"{module}._{param}_{n}"] = getattr(t, n).detach()
        attributes = {"bits": t.bits, "weight_shape": list(t.weight_shape), "act_bits": t.act_bits,
                      "dtype": {"_type": "torch.dtype", "_data": str(t.dtype).split(".")[-1]}}
        metadata[name] = json.dumps({"_type": _PACKED, "_data": attributes, "_tensor_data_names": data_names})
        names.append(name)
    metadata["tensor_names"] = json.dumps(names)
    return tensors, metadata


def _packed_from_entry(path, name: str, entry: dict, tensors: dict) -> QSAM2PackedTensor:
    """A packed tensor from its safetensors entry, every field checked (file content is data)."""
    def bad(what):
        return BadFileError(path, f"packed tensor {name!r}: {what}")

    data = entry.get("_data")
    names = entry.get("_tensor_data_names")
    if not isinstance(data, dict) or not isinstance(names, list):
        raise bad("malformed entry")
    bits, shape, act_bits = data.get("bits"), data.get("weight_shape"), data.get("act_bits")
    dtype = _FLOATS.get((data.get("dtype") or {}).get("_data")) if isinstance(data.get("dtype"), dict) else None
    if bits not in SUPPORTED_BITS or isinstance(bits, bool) or (act_bits is not None and act_bits not in SUPPORTED_BITS):
        raise bad(f"bits {bits!r} / act_bits {act_bits!r} not supported")
    if not isinstance(shape, list) or len(shape) not in (2, 4) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in shape):
        raise bad(f"weight_shape {shape!r} is not a 2-D or 4-D shape")
    if dtype is None:
        raise bad(f"dtype {data.get('dtype')!r} is not float32, bfloat16 or float16")
    allowed = set(QSAM2PackedTensor.tensor_data_names + QSAM2PackedTensor.optional_tensor_data_names)
    if not set(QSAM2PackedTensor.tensor_data_names) <= set(names) <= allowed:
        raise bad(f"tensor data {names!r}")
    module, param = name.rsplit(".", 1)
    parts = {}
    for n in names:
        key = f"{module}._{param}_{n}"
        if key not in tensors:
            raise bad(f"tensor {key!r} is missing")
        parts[n] = tensors.pop(key)
    out, k = shape[0], 1
    for d in shape[1:]:
        k *= d
    packed, center, step = parts["packed"], parts["center"], parts["step"]
    if packed.dtype != torch.uint8 or tuple(packed.shape) != (out, packed_length(k, bits)):
        raise bad(f"packed codes {packed.dtype} {tuple(packed.shape)} do not hold {out}x{k} {bits}-bit codes")
    if center.ndim != 2 or center.shape[0] != out or k % center.shape[1] or step.shape != center.shape \
            or not center.is_floating_point() or step.dtype != center.dtype:
        raise bad(f"grids {tuple(center.shape)} / {tuple(step.shape)} do not fit {out} rows of {k} inputs")
    act = [parts.get("act_center"), parts.get("act_step")]
    if (act[0] is None) != (act[1] is None) or (act[0] is not None and (act_bits is None or act[0].shape != act[1].shape
                                                                       or act[0].ndim > 1)):
        raise bad("activation grid is incomplete or malformed")
    return QSAM2PackedTensor(packed, center, step, bits, tuple(shape), dtype, act[0], act[1], act_bits)


def _unflatten(path, tensors: dict, metadata: dict) -> dict:
    """Inverse of ``_flatten``: packed entries here, everything else through torchao's ``unflatten_tensor_state_dict``."""
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    try:
        names = json.loads(metadata["tensor_names"])
        entries = {n: json.loads(metadata[n]) for n in names}
    except (KeyError, TypeError, ValueError, RecursionError):
        raise BadFileError(path, "has no readable torchao safetensors metadata") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and "." in n and isinstance(e, dict)
                                              for n, e in entries.items()):
        raise BadFileError(path, "malformed tensor entries in its metadata")
    tensors = dict(tensors)
    ours = {n: _packed_from_entry(path, n, e, tensors) for n, e in entries.items() if e.get("_type") == _PACKED}
    rest = {k: v for k, v in metadata.items() if k not in ours}
    rest["tensor_names"] = json.dumps([n for n in names if n not in ours])
    try:
        sd, leftover = unflatten_tensor_state_dict(tensors, rest)
    except Exception as e:  # noqa: BLE001 - torchao raises many kinds for a damaged layout
        raise BadFileError(path, f"its tensors cannot be reassembled ({describe(e, 160)})") from None
    if leftover:
        raise BadFileError(path, f"{len(leftover)} tensors could not be reassembled: {sorted(leftover)[:5]}")
    return {**sd, **ours}


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

        # keys live under "model." like the official checkpoints' "model" entry (torchao's flattening also needs
        # a "." in every key, and SAM2Base has top-level parameters such as "no_mem_embed")
        tensors, layout = _flatten({_PREFIX + k: v for k, v in sd.items()})
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
        ckpt = load_torch(path, mmap=True)  # the metadata only: the tensors are not read
        text = ckpt.get(_METADATA) if isinstance(ckpt, dict) else None
    return parse_json_metadata(text, path)


def read_quantized(path: PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a file written by ``save_quantized`` (or any official-layout checkpoint)."""
    path = check_file(path)
    if not path.endswith(".safetensors"):
        return dict(read_checkpoint(path))
    from safetensors.torch import load_file

    metadata = safetensors_metadata(path)  # a one-line error for an empty, truncated or foreign file
    try:
        tensors = load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged body
        raise BadFileError(path, f"its tensors cannot be read ({describe(e, 160)})") from None
    sd = _unflatten(path, tensors, metadata)
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
            if isinstance(param, TorchAOBaseTensor) and param.requires_grad:
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
    """Bytes of quantized weights (codes + grids) against the same weights in bf16, and of the whole model."""
    packed = packed_bf16 = total = 0
    for t in model.state_dict().values():
        if isinstance(t, TorchAOBaseTensor):  # ours, or torchao's own (codes and grids it holds)
            held = sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in t.__tensor_flatten__()[0])
            packed += held
            packed_bf16 += t.numel() * 2
            total += held
        else:
            total += t.numel() * t.element_size()
    return {"packed_bytes": packed, "packed_as_bf16_bytes": packed_bf16, "model_bytes": total,
            "packed_ratio_vs_bf16": packed / packed_bf16 if packed_bf16 else None}


__all__ = ["load_into", "load_quantized", "read_metadata", "read_quantized", "save_quantized", "storage_report"]
