"""``QSAM2QATConfig``: torchao's ``QATConfig`` call shape for LSC, until torchao lets fake-quantize configs
register themselves (torchao 0.18's ``FakeQuantizerBase.from_config`` and ``_infer_fake_quantize_configs`` are
closed if/elif chains; ``scripts/upstream.py torchao`` adds the registration API).

>>> quantize_(model, QSAM2QATConfig(QSAM2Config(weight_dtype=torch.int2), step="prepare")); train(model)
>>> quantize_(model, QSAM2QATConfig(QSAM2Config(weight_dtype=torch.int2), step="convert"))
>>> quantize_(model, QSAM2QATConfig(weight_config=LSCFakeQuantizeConfig(torch.int4, PerGroup(32)), step="prepare"))
>>> quantize_(model, QSAM2QATConfig(weight_config=IntxFakeQuantizeConfig(torch.int4, group_size=32), step="prepare"))

Prepare swaps ``nn.Linear`` for torchao's own ``FakeQuantizedLinear`` holding ``LSCFakeQuantizer``s (or torchao's
quantizers for its own configs: the baseline runs in the same harness). Convert packs each LSC layer with the grid it
learned (``QSAM2Config``'s packing formats); layers holding torchao's quantizers convert through torchao's
``QATConfig``. Nothing of torchao is patched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torchao.core.config import AOBaseConfig
from torchao.quantization import register_quantize_module_handler
from torchao.quantization.granularity import PerAxis, PerTensor
from torchao.quantization.qat import QATConfig
from torchao.quantization.qat.fake_quantize_config import FakeQuantizeConfigBase
from torchao.quantization.qat.fake_quantizer import FakeQuantizerBase
from torchao.quantization.qat.linear import FakeQuantizedLinear
from torchao.quantization.transform_module import _QUANTIZE_CONFIG_HANDLER

from .configs import QSAM2Config
from .fake_quantize import LSCFakeQuantizeConfig, LSCFakeQuantizer
from .weights import inference_weight


@dataclass(init=False)
class QSAM2QATConfig(AOBaseConfig):
    """``QATConfig(base_config, activation_config, weight_config, *, step)``, accepting LSC configs."""

    base_config: Optional[AOBaseConfig]
    activation_config: Optional[FakeQuantizeConfigBase]
    weight_config: Optional[FakeQuantizeConfigBase]
    step: str

    def __init__(self, base_config: Optional[AOBaseConfig] = None,
                 activation_config: Optional[FakeQuantizeConfigBase] = None,
                 weight_config: Optional[FakeQuantizeConfigBase] = None, *, step: str = "prepare"):
        if base_config is not None and not isinstance(base_config, QSAM2Config):
            # torchao's own base configs: validated (and later applied) by torchao's QATConfig
            QATConfig(base_config, activation_config, weight_config, step=step)
        elif base_config is not None:
            if activation_config is not None or weight_config is not None:
                raise ValueError("give base_config or activation_config / weight_config, not both")
            if base_config.method != "lsc":
                raise ValueError(f"QSAM2QATConfig trains LSC; method {base_config.method!r} trains through "
                                 "QSAM2Config(step='prepare')")
        step = step.lower() if isinstance(step, str) else step
        if step not in ("prepare", "convert"):
            raise ValueError(f"step must be 'prepare' or 'convert', got {step!r}")
        if step == "prepare" and base_config is None and weight_config is None and activation_config is None:
            raise ValueError("the prepare step needs base_config, activation_config or weight_config")
        if step == "convert" and (weight_config is not None or activation_config is not None):
            raise ValueError("the convert step takes a base_config only")
        for config in (activation_config, weight_config):
            if config is not None and not isinstance(config, FakeQuantizeConfigBase):
                raise ValueError(f"{type(config).__name__} is not a torchao FakeQuantizeConfigBase")
        if isinstance(weight_config, LSCFakeQuantizeConfig) and weight_config.is_activation:
            raise ValueError("weight_config has an activation granularity (PerTensor / PerAxis(-1))")
        if isinstance(activation_config, LSCFakeQuantizeConfig) and not activation_config.is_activation:
            raise ValueError("activation_config needs granularity PerTensor() or PerAxis(-1)")
        self.base_config, self.activation_config, self.weight_config, self.step = (
            base_config, activation_config, weight_config, step)

    def fake_quantize_configs(self) -> tuple[Optional[FakeQuantizeConfigBase], Optional[FakeQuantizeConfigBase]]:
        """``(activation, weight)`` configs: given, or inferred from a ``QSAM2Config`` base config."""
        base = self.base_config
        if not isinstance(base, QSAM2Config):
            return self.activation_config, self.weight_config
        weight = LSCFakeQuantizeConfig(base.weight_dtype, base.granularity, base.alpha_init)
        activation = None if base.activation_dtype is None else LSCFakeQuantizeConfig(
            base.activation_dtype, PerAxis(-1) if base.act_per_channel else PerTensor(), base.act_alpha_init,
            base.momentum)
        return activation, weight


def _quantizer(config: Optional[FakeQuantizeConfigBase], example: torch.Tensor):
    if config is None:
        return None
    if isinstance(config, LSCFakeQuantizeConfig):
        return LSCFakeQuantizer(config).initialize(example)  # alpha exists before the optimizer is built
    return FakeQuantizerBase.from_config(config)


def _prepare(module: nn.Module, config: QSAM2QATConfig) -> nn.Module:
    if not isinstance(module, nn.Linear) or isinstance(module, FakeQuantizedLinear):
        if isinstance(module, FakeQuantizedLinear):
            raise RuntimeError("this Linear is already prepared for QAT: convert it with step='convert'")
        return module  # torchao's QATConfig swaps Linear (and Embedding) only
    act_config, weight_config = config.fake_quantize_configs()
    fq = FakeQuantizedLinear.from_linear(module)  # no configs: torchao would refuse LSC's in from_config
    fq.weight_fake_quantizer = _quantizer(weight_config, module.weight.detach())
    fq.activation_fake_quantizer = _quantizer(act_config, module.weight.new_empty(1, module.in_features))
    return fq


def _convert(module: nn.Module, config: QSAM2QATConfig) -> nn.Module:
    if not isinstance(module, FakeQuantizedLinear):
        return module
    weight_q, act_q = module.weight_fake_quantizer, module.activation_fake_quantizer
    if not isinstance(weight_q, LSCFakeQuantizer):  # torchao's quantizers: torchao's own convert
        return _QUANTIZE_CONFIG_HANDLER[QATConfig](module, QATConfig(config.base_config, step="convert"))
    base = config.base_config if isinstance(config.base_config, QSAM2Config) else QSAM2Config(
        weight_dtype=weight_q.config.dtype)
    linear = module.to_linear()
    codes, center, step = weight_q.lsc.encode(linear.weight.detach())
    lsc_inputs = isinstance(act_q, LSCFakeQuantizer) and act_q.lsc is not None
    if act_q is not None and not lsc_inputs:
        raise ValueError("an LSC weight with torchao's input fake quantizer: convert with torchao's QATConfig")
    act_bits, act_grid = (act_q.config.bits, act_q.lsc.grid()) if lsc_inputs else (None, None)
    weight = linear.weight
    linear.weight = nn.Parameter(inference_weight(
        codes, center, step, weight_q.config.bits, weight.dtype, base.scale_dtype or weight.dtype,
        base.packing_format.value, f"Linear({linear.in_features}->{linear.out_features})", act_bits, act_grid),
        requires_grad=False)
    return linear


def _lsc_configs(base: QSAM2Config):
    """LSC's fake-quantize configs for a ``QSAM2Config`` (what ``QATConfig`` infers from base configs)."""
    return QSAM2QATConfig(base).fake_quantize_configs()


try:  # torchao with the registration API: QATConfig(QSAM2Config(...), step="prepare") works directly
    from torchao.quantization.qat import register_fake_quantize_configs
except ImportError:
    register_fake_quantize_configs = None
if register_fake_quantize_configs is not None:
    register_fake_quantize_configs(QSAM2Config)(_lsc_configs)


@register_quantize_module_handler(QSAM2QATConfig)
def _qsam2_qat_transform(module: nn.Module, config: QSAM2QATConfig) -> nn.Module:
    return _prepare(module, config) if config.step == "prepare" else _convert(module, config)
