"""Fake-quantized layers for QAT: ``nn.Linear`` / ``nn.Conv2d`` subclasses whose weight (and optionally input)
pass through a ``FakeQuantizer`` in every forward.

They subclass the float layers so everything that inspects layer types keeps working (torchao's ``_is_linear``,
SAM2's code, optimizers), and they share the float layer's ``weight``/``bias`` Parameters, so an optimizer built
before the swap keeps updating the same tensors.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from .granularity import ActivationGranularity, WeightGranularity
from .quantizers import FakeQuantizer, make_quantizer


class FakeQuantized:
    """Mixin: a float layer plus ``weight_quantizer`` and optional ``input_quantizer`` submodules."""

    weight_quantizer: FakeQuantizer
    input_quantizer: Optional[FakeQuantizer]

    def _attach(self, float_layer: nn.Module, weight_quantizer: FakeQuantizer, input_quantizer: Optional[FakeQuantizer]):
        self.weight = float_layer.weight
        self.bias = float_layer.bias
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        self.train(float_layer.training)
        return self.to(float_layer.weight.device)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def to_float(self) -> nn.Module:
        """The plain float layer (sharing ``weight``/``bias``), without quantizers."""
        raise NotImplementedError

    def check_ready(self) -> None:
        """Raise if an activation quantizer never saw data (its grid would be undefined)."""
        if self.input_quantizer is not None:
            self.input_quantizer.grid()


class FakeQuantLinear(FakeQuantized, nn.Linear):
    @classmethod
    def from_float(
        cls, linear: nn.Linear, weight_quantizer: FakeQuantizer, input_quantizer: Optional[FakeQuantizer] = None
    ) -> "FakeQuantLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        return layer._attach(linear, weight_quantizer, input_quantizer)

    def to_float(self) -> nn.Linear:
        layer = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        layer.weight, layer.bias = self.weight, self.bias
        return layer.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quantize_input(x), self.weight_quantizer(self.weight), self.bias)


class FakeQuantConv2d(FakeQuantized, nn.Conv2d):
    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, weight_quantizer: FakeQuantizer, input_quantizer: Optional[FakeQuantizer] = None
    ) -> "FakeQuantConv2d":
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
        )
        return layer._attach(conv, weight_quantizer, input_quantizer)

    def to_float(self) -> nn.Conv2d:
        layer = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.bias is not None, self.padding_mode, device="meta",
        )
        layer.weight, layer.bias = self.weight, self.bias
        return layer.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quantize_input(x), self.weight_quantizer(self.weight), self.bias)


def fake_quantized(layer: nn.Module, weight_quantizer: FakeQuantizer, input_quantizer: Optional[FakeQuantizer] = None):
    """The fake-quantized twin of a float ``nn.Linear`` or ``nn.Conv2d``."""
    if isinstance(layer, FakeQuantized):
        raise TypeError(f"{type(layer).__name__} is already fake-quantized")
    if isinstance(layer, nn.Linear):
        return FakeQuantLinear.from_float(layer, weight_quantizer, input_quantizer)
    if isinstance(layer, nn.Conv2d):
        return FakeQuantConv2d.from_float(layer, weight_quantizer, input_quantizer)
    raise TypeError(f"cannot fake-quantize a {type(layer).__name__}: only nn.Linear and nn.Conv2d")


def layer_quantizers(
    layer: nn.Module,
    method: str,
    bits: int,
    act_bits: Optional[int] = None,
    group_size: Optional[int] = None,
    act_per_channel: bool = False,
    weight_options: Optional[dict] = None,
    input_options: Optional[dict] = None,
) -> tuple[FakeQuantizer, Optional[FakeQuantizer]]:
    """The weight quantizer and (with ``act_bits``) input quantizer of a Linear / Conv2d layer; every host
    framework adapter builds its quantizers here, so torchao and NNCF quantize the same tensors the same way.
    ``group_size`` must divide the inputs per output channel (adapters apply ``effective_group_size`` first)."""
    granularity = WeightGranularity.for_weight(layer.weight, group_size)
    weight_q = make_quantizer(method, bits, granularity, **(weight_options or {}))
    input_q = None
    if act_bits is not None:
        conv = isinstance(layer, nn.Conv2d)
        channels = layer.weight.shape[1] * (layer.groups if conv else 1)
        act = ActivationGranularity(channels if act_per_channel else None, 1 if conv else -1)
        input_q = make_quantizer(method, act_bits, act, **(input_options or {})).to(layer.weight.device)
    return weight_q.to(layer.weight.device), input_q
