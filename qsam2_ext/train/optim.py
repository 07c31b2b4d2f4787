"""Optimizer with separate parameter groups for weights and quantizer parameters, and the learning-rate schedule."""

from __future__ import annotations

import math
import re
import sys

import torch
from torch import nn

from ..core import FakeQuantizer
from .config import TrainConfig


# Host-framework quantizer classes whose parameters belong with the quantizer parameters, not with the weights
# and their decay (NNCF's learned ranges; torchao's FakeQuantizerBase is recognised below). An adapter may register
# its own when imported, so this module imports no framework.
EXTRA_QUANTIZER_TYPES: list[type] = []


def register_quantizer_type(cls: type) -> None:
    if cls not in EXTRA_QUANTIZER_TYPES:
        EXTRA_QUANTIZER_TYPES.append(cls)


def _quantizer_types() -> tuple[type, ...]:
    types = [FakeQuantizer, *EXTRA_QUANTIZER_TYPES]
    # torchao's fake quantizers (range-learning scales, the LSC FakeQuantizerBase): recognised here, without
    # importing torchao for models that never used it
    qat = sys.modules.get("torchao.quantization.qat.fake_quantizer")
    if qat is not None:
        types.append(qat.FakeQuantizerBase)
    return tuple(types)


def parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(weights, quantizer parameters)``: the trainable parameters of fake-quantizer submodules (LSC/PACT
    alpha, LSQ step, torchao's learned scales) and every other trainable parameter. Frozen parameters
    (``requires_grad=False``) are in neither."""
    types = _quantizer_types()
    quantizer_ids = {id(p) for m in model.modules() if isinstance(m, types) for p in m.parameters()}
    weights, quantizer = [], []
    for p in model.parameters():
        if p.requires_grad:
            (quantizer if id(p) in quantizer_ids else weights).append(p)
    return weights, quantizer


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over three groups: decayed weights, weights exempt from decay (``config.decay_exempt``, matched on
    parameter names), and quantizer parameters (no decay, their own learning rate). Empty groups are left out."""
    weights, quantizer = parameter_groups(model)
    if not weights and not quantizer:
        raise ValueError("the model has no trainable parameter")
    exempt_ids = set()
    if config.decay_exempt:
        pattern = re.compile(config.decay_exempt)
        exempt_ids = {id(p) for name, p in model.named_parameters() if pattern.search(name)}
    groups = [
        {"name": "weights", "params": [p for p in weights if id(p) not in exempt_ids], "lr": config.lr,
         "weight_decay": config.weight_decay},
        {"name": "weights_no_decay", "params": [p for p in weights if id(p) in exempt_ids], "lr": config.lr,
         "weight_decay": 0.0},
        {"name": "quantizer", "params": quantizer, "lr": config.quantizer_lr, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]])


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of the peak learning rates at ``step``: linear warm-up, then constant or cosine decay."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
