"""``QSAM2Config`` through ``quantize_``: QAT prepare (own module swap), convert to packed weights, one-shot PTQ,
and interop with torchao's own range-learning QAT (``QATConfig(QSAM2Config(...), step="convert")``).
"""

from __future__ import annotations

import logging
import types
from functools import partial
from typing import Optional

import torch
from torch import nn
from torchao.quantization import register_quantize_module_handler

from qsam2_ext.core import (
    FakeQuantized,
    code_range,
    effective_group_size,
    fake_quantized,
    layer_quantizers,
    quantize,
)

from .configs import QSAM2Config
from .packed_tensor import QSAM2PackedTensor
from .session import describe, session_for

log = logging.getLogger(__name__)
_SESSION = "_qsam2_session"


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
    packed = QSAM2PackedTensor.from_codes(
        codes, center, step, bits, weight.dtype, config.scale_dtype or weight.dtype, act_bits, act_grid
    )
    layer.weight = nn.Parameter(packed, requires_grad=False)
    layer.extra_repr = types.MethodType(partial(_packed_extra_repr, float_repr=layer.extra_repr), layer)
    return layer


def _packed_extra_repr(layer: nn.Module, float_repr) -> str:
    return f"{float_repr()}, weight={layer.weight.describe()}"


def _quantize(layer: nn.Module, weight_q, input_q, config: QSAM2Config, static_inputs: bool) -> nn.Module:
    """Give ``layer`` the packed weight of ``weight_q``'s grid (learned, or initial for one-shot PTQ); inputs are
    quantized with ``input_q``'s learned static grid, or dynamically per token when it has no statistics."""
    codes, center, step = weight_q.encode(layer.weight.detach())
    act_bits = None if input_q is None else input_q.bits
    act_grid = input_q.grid() if input_q is not None and static_inputs else None
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
    qmin, qmax = code_range(config.bits)
    center = -(zp + 0.5) * scale
    groups = rows.float().reshape(rows.shape[0], scale.shape[1], -1)
    codes = quantize(groups, center.unsqueeze(-1), scale.unsqueeze(-1), config.bits).reshape(weight.shape)
    return _pack(layer, codes, center, scale, config.bits, config, config.act_bits, None)


def _check_ready(layer: nn.Module) -> None:
    try:
        layer.check_ready()
    except RuntimeError as e:
        raise RuntimeError(f"{describe(layer)}: {e}") from None


@register_quantize_module_handler(QSAM2Config)
def _qsam2_transform(
    module: nn.Module, config: QSAM2Config, *, parameter_name="weight", custom_scale=None, custom_zero_point=None
) -> nn.Module:
    if parameter_name != "weight":
        return module  # an FqnToConfig key matched e.g. a bias: only weights are quantized
    if custom_scale is not None:  # called by torchao's QATConfig(..., step="convert") after range learning
        return _convert_from_torchao(module, config, custom_scale, custom_zero_point)
    if isinstance(module, FakeQuantized):
        if config.step != "convert":
            raise RuntimeError(f"{describe(module)} is already prepared for QAT: convert it with step='convert'")
        session = getattr(module, _SESSION, None)
        session.check_all(_check_ready) if session is not None else _check_ready(module)
        return _quantize(module.to_float(), module.weight_quantizer, module.input_quantizer, config, static_inputs=True)
    if not isinstance(module, (nn.Linear, nn.Conv2d)) or isinstance(module.weight, QSAM2PackedTensor):
        return module  # not a quantizable layer (e.g. a container matched by a regex), or already converted
    if config.step == "convert":
        return module  # never prepared: converting it would silently quantize a layer nobody trained
    weight_q, input_q = _quantizers(module, config)
    if config.step is None:  # one-shot PTQ, in place: initial weight grids, inputs quantized per token
        return _quantize(module, weight_q, input_q, config, static_inputs=False)
    fq = fake_quantized(module, weight_q, input_q)
    session = session_for(config)
    session.add(fq)
    setattr(fq, _SESSION, session)
    return fq
