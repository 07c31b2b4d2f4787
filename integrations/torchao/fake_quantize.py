"""LSC in torchao's QAT vocabulary: ``LSCFakeQuantizeConfig`` (a ``FakeQuantizeConfigBase``) and
``LSCFakeQuantizer`` (a ``FakeQuantizerBase``), the pair torchao's ``FakeQuantizedLinear`` holds.

The math is ``qsam2_ext.core.LSCQuantizer``'s (one implementation): the fake quantizer builds it for the tensor it
first sees (or in ``initialize``, before the optimizer is made, as torchao's ``initialize_fake_quantizers`` does for
range learning), so it can be made from a config alone, as ``FakeQuantizerBase.from_config`` makes quantizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torchao.quantization.granularity import Granularity, PerAxis, PerGroup, PerTensor
from torchao.quantization.qat.fake_quantize_config import FakeQuantizeConfigBase
from torchao.quantization.qat.fake_quantizer import FakeQuantizerBase

from qsam2_ext.core import ActivationGranularity, LSCQuantizer, WeightGranularity

_BITS = {torch.int2: 2, torch.int3: 3, torch.int4: 4, torch.int8: 8}


@dataclass
class LSCFakeQuantizeConfig(FakeQuantizeConfigBase):
    """Learnable Statistical Clipping: clip to ``mu ± alpha * sigma`` (``alpha`` learned), round onto the b-bit
    mid-rise grid, straight through.

    * weights: ``granularity=PerAxis(0)`` (per output channel) or ``PerGroup(n)``; live statistics.
    * activations: ``PerTensor()`` or ``PerAxis(-1)`` (per input channel); statistics tracked with ``momentum``.
    """

    dtype: torch.dtype = torch.int2
    granularity: Granularity = PerAxis(0)
    alpha_init: Optional[float] = None
    momentum: Optional[float] = None

    def __post_init__(self):
        if self.dtype not in _BITS:
            raise ValueError(f"dtype must be one of {list(_BITS)}, got {self.dtype!r}")
        weight = isinstance(self.granularity, PerGroup) or self.granularity == PerAxis(0)
        activation = isinstance(self.granularity, PerTensor) or self.granularity == PerAxis(-1)
        if not (weight or activation):
            raise ValueError("granularity must be PerAxis(0) or PerGroup(n) (weights), PerTensor() or PerAxis(-1) "
                             f"(activations), got {self.granularity!r}")
        if weight and self.momentum is not None:
            raise ValueError("momentum applies to activations (weights use live statistics)")
        LSCQuantizer(self.bits, ActivationGranularity() if activation else WeightGranularity(1, 1),
                     self.alpha_init, self.momentum)  # the core's own validation of alpha_init and momentum

    @property
    def bits(self) -> int:
        return _BITS[self.dtype]

    @property
    def is_activation(self) -> bool:
        return not (isinstance(self.granularity, PerGroup) or self.granularity == PerAxis(0))


class LSCFakeQuantizer(FakeQuantizerBase):
    """Fake-quantizes with the ``LSCQuantizer`` it builds for the first tensor it sees (``initialize``)."""

    def __init__(self, config: LSCFakeQuantizeConfig):
        super().__init__()
        self.config = config
        self.lsc: Optional[LSCQuantizer] = None

    def initialize(self, x: torch.Tensor) -> "LSCFakeQuantizer":
        """Build the quantizer (its learned ``alpha``) for tensors shaped like ``x``."""
        c = self.config
        if c.is_activation:
            granularity = ActivationGranularity(None if isinstance(c.granularity, PerTensor) else x.shape[-1])
        else:
            group = c.granularity.group_size if isinstance(c.granularity, PerGroup) else None
            granularity = WeightGranularity.for_weight(x, group)
        self.lsc = LSCQuantizer(c.bits, granularity, c.alpha_init, c.momentum).to(x.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lsc is None:
            self.initialize(x)
        return self.lsc(x)

    def convert_kwargs(self, weight: torch.Tensor) -> dict:
        """What torchao's ``QATConfig`` convert hands the base config's handler (the registration API's hook): the
        learned weight grid as torchao's ``custom_scale`` / float ``custom_zero_point`` (``-1/2 - center/step``).
        Weights only: ``QSAM2QATConfig`` also carries a learned input grid."""
        center, step = self.lsc.grid(weight.detach())
        return {"custom_scale": step, "custom_zero_point": -0.5 - center / step}


try:  # torchao with the fake-quantize registration API (added by `scripts/upstream.py torchao`)
    from torchao.quantization.qat import register_fake_quantizer
except ImportError:  # torchao 0.18: QSAM2QATConfig builds LSC's quantizers itself
    register_fake_quantizer = None
if register_fake_quantizer is not None:
    register_fake_quantizer(LSCFakeQuantizeConfig)(LSCFakeQuantizer)
