"""``QSAM2Config`` through ``quantize_``: QAT prepare (own module swap, Linear and Conv2d), convert to the
inference weight (``weights.inference_weight``), one-shot PTQ, and interop with torchao's own range-learning QAT
(``QATConfig(QSAM2Config(...), step="convert")``).

The handler quantizes what it is given or raises (``check_quantizable``): a Linear holding a 3-D weight, a bare
weight of another shape, a layer parameter other than weight and bias. What a name pattern sweeps up besides
layers (embeddings, norms, position embeddings) stays float, logged: ``FqnToConfig({"re:image_encoder[.].*": ..})``
is how the project targets a SAM2 submodule, and a handler cannot tell a pattern's match from an exact key.
"""

from __future__ import annotations

import logging
import types
from functools import partial
from typing import Optional

import torch
from torch import nn
from torchao.quantization import register_quantize_module_handler
from torchao.utils import DummyModule, TorchAOBaseTensor

from qsam2_ext.core import (
    FakeQuantized,
    effective_group_size,
    fake_quantized,
    layer_quantizers,
    quantize,
)

from .configs import QSAM2Config
from .session import describe, session_for
from .weights import inference_weight

log = logging.getLogger(__name__)
_SESSION = "_qsam2_session"
_QUANTIZABLE = (nn.Linear, nn.Conv2d)


def _group_size(layer: nn.Module, group_size: Optional[int]) -> Optional[int]:
    """``group_size`` if it divides the inputs per output channel, else per output channel (documented fallback)."""
    in_size = layer.weight[0].numel()
    effective = effective_group_size(in_size, group_size)
    if effective == group_size:
        return group_size
    log.info("%s: group_size %d does not divide %d inputs; using per-output-channel grids", describe(layer), group_size, in_size)
    return None


def _quantizers(layer: nn.Module, config: QSAM2Config):
    """The weight quantizer and (with ``act_bits``) input quantizer ``config`` asks for on ``layer``."""
    return layer_quantizers(layer, config.method, config.bits, config.act_bits, _group_size(layer, config.group_size),
                            config.act_per_channel, config.weight_options(), config.input_options())


def _pack(layer: nn.Module, codes, center, step, bits, config: QSAM2Config, act_bits, act_grid) -> nn.Module:
    weight = layer.weight
    new = inference_weight(codes, center, step, bits, weight.dtype, config.scale_dtype or weight.dtype,
                           config.packing_format.value, describe(layer), act_bits, act_grid)
    layer.weight = nn.Parameter(new, requires_grad=False)
    layer.extra_repr = types.MethodType(partial(_packed_extra_repr, float_repr=layer.extra_repr), layer)
    return layer


def _packed_extra_repr(layer: nn.Module, float_repr) -> str:
    w = layer.weight
    return f"{float_repr()}, weight={w.describe() if hasattr(w, 'describe') else w._quantization_type()}"


def _quantize(layer: nn.Module, weight_q, input_q, config: QSAM2Config, one_shot: bool) -> nn.Module:
    """Give ``layer`` the weight of ``weight_q``'s grid: learned (convert), or for one-shot PTQ the initial grid
    kept within each row's range. Inputs are quantized with ``input_q``'s learned static grid, or dynamically per
    token when it has no statistics."""
    codes, center, step = weight_q.encode(layer.weight.detach(), within_range=one_shot)
    act_bits = None if input_q is None else input_q.bits
    act_grid = input_q.grid() if input_q is not None and not one_shot else None
    return _pack(layer, codes, center, step, weight_q.bits, config, act_bits, act_grid)


def _convert_from_torchao(layer: nn.Module, config: QSAM2Config, scale: torch.Tensor, zero_point) -> nn.Module:
    """Pack with the scales torchao's range-learning QAT learned: its ``(q - zp) * s`` grid is our grid with
    ``step = s`` and ``center = -(zp + 1/2) s``; ``config.bits`` must be the bit width that QAT used."""
    weight = layer.weight.detach()
    rows = weight.reshape(weight.shape[0], -1)
    scale = scale.detach().to(torch.float32).reshape(rows.shape[0], -1)
    zp = torch.zeros_like(scale) if zero_point is None else zero_point.detach().to(torch.float32).reshape(scale.shape)
    if rows.shape[1] % scale.shape[1]:
        raise ValueError(f"{describe(layer)}: {scale.shape[1]} scale groups do not divide {rows.shape[1]} inputs")
    center = -(zp + 0.5) * scale
    groups = rows.float().reshape(rows.shape[0], scale.shape[1], -1)
    codes = quantize(groups, center.unsqueeze(-1), scale.unsqueeze(-1), config.bits).reshape(weight.shape)
    return _pack(layer, codes, center, scale, config.bits, config, config.act_bits, None)


def _check_ready(layer: nn.Module) -> None:
    try:
        layer.check_ready()
    except RuntimeError as e:
        raise RuntimeError(f"{describe(layer)}: {e}") from None


def check_quantizable(module: nn.Module, parameter_name: str, config_name: str, bare_weights: bool = True) -> bool:
    """Whether the handler should quantize ``module``'s ``parameter_name``; raises for what it was asked to
    quantize but cannot (shared by every Q-SAM2 handler).

    * ``nn.Linear`` / ``nn.Conv2d``: their 2-D / 4-D ``weight`` is quantized; any other shape raises (a 3-D MoE
      stack stitched into a Linear); their ``bias`` stays float; another parameter of theirs raises.
    * torchao's ``DummyModule``, the bare-weight holder through which AWQ and MoE tooling apply a base config:
      a 2-D (or 4-D) weight is quantized (with ``bare_weights``), anything else raises.
    * Any other module (an Embedding, a ConvTranspose2d, a norm, a container, a model parameter such as a position
      embedding) is what a name pattern such as ``re:image_encoder[.].*`` sweeps up: it stays float, logged.
    """
    weight = getattr(module, parameter_name, None)
    if isinstance(module, _QUANTIZABLE):
        if parameter_name == "bias":
            return False
        if parameter_name != "weight":
            raise ValueError(f"{config_name} quantizes the weight of {type(module).__name__}, not {parameter_name!r}")
        expected = 2 if isinstance(module, nn.Linear) else 4
        if weight.ndim != expected:
            raise ValueError(f"{config_name}: {type(module).__name__} has a {weight.ndim}-D weight of shape "
                             f"{tuple(weight.shape)}; only {expected}-D weights can be quantized")
        return True
    if isinstance(module, DummyModule):
        if not bare_weights:
            raise ValueError(f"{config_name} calibrates layers (nn.Linear / 1x1 nn.Conv2d), not a bare weight")
        if parameter_name != "weight" or not isinstance(weight, torch.Tensor) or weight.ndim not in (2, 4):
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
            raise ValueError(f"{config_name} quantizes 2-D (Linear) and 4-D (Conv2d) weights, not {parameter_name!r} "
                             f"of shape {shape}: quantize each expert's 2-D weight on its own")
        return True
    log.info("%s: %s.%s stays float (%s quantizes Linear and Conv2d weights)", config_name, type(module).__name__,
             parameter_name, config_name)
    return False


@register_quantize_module_handler(QSAM2Config)
def _qsam2_transform(
    module: nn.Module, config: QSAM2Config, *, parameter_name="weight", custom_scale=None, custom_zero_point=None
) -> nn.Module:
    if custom_scale is not None:  # called by torchao's QATConfig(..., step="convert") after range learning
        return _convert_from_torchao(module, config, custom_scale, custom_zero_point)
    if parameter_name == "bias":
        return module  # an FqnToConfig pattern over a layer's parameters: the weight's call did the work
    if isinstance(module, FakeQuantized):
        if config.step != "convert":
            raise RuntimeError(f"{describe(module)} is already prepared for QAT: convert it with step='convert'")
        session = getattr(module, _SESSION, None)
        session.check_all(_check_ready) if session is not None else _check_ready(module)
        return _quantize(module.to_float(), module.weight_quantizer, module.input_quantizer, config, one_shot=False)
    if not check_quantizable(module, parameter_name, "QSAM2Config"):
        return module
    if isinstance(module.weight, TorchAOBaseTensor):
        return module  # already converted (a quantized tensor subclass)
    if config.step == "convert":
        return module  # never prepared: converting it would silently quantize a layer nobody trained
    weight_q, input_q = _quantizers(module, config)
    if config.step is not None and not isinstance(module, _QUANTIZABLE):
        raise ValueError("QSAM2Config(step='prepare') trains nn.Linear / nn.Conv2d layers; a bare weight is quantized "
                         "one-shot (step=None)")
    if config.step is None:  # one-shot PTQ, in place: initial weight grids, inputs quantized per token
        return _quantize(module, weight_q, input_q, config, one_shot=True)
    fq = fake_quantized(module, weight_q, input_q)
    session = session_for(config)
    session.add(fq)
    setattr(fq, _SESSION, session)
    return fq
