"""Tests of the QAT fake-quantize registration API: a fake-quantize config registers the FakeQuantizerBase that
QATConfig builds for it, a base PTQ config registers the fake-quantize configs its prepare step uses, and a fake
quantizer hands the base config's handler what it learned at convert."""

import copy
import unittest
from dataclasses import dataclass

import torch
from torch import nn

from torchao.core.config import AOBaseConfig
from torchao.quantization import quantize_
from torchao.quantization.qat import (
    FakeQuantizeConfigBase,
    FakeQuantizerBase,
    QATConfig,
    register_fake_quantize_configs,
    register_fake_quantizer,
)
from torchao.quantization.qat.linear import FakeQuantizedLinear
from torchao.quantization.transform_module import register_quantize_module_handler


@dataclass
class _HalvingConfig(FakeQuantizeConfigBase):
    factor: float = 0.5


@register_fake_quantizer(_HalvingConfig)
class _HalvingFakeQuantizer(FakeQuantizerBase):
    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, x):
        return x * self.config.factor

    def convert_kwargs(self, weight):
        return {"custom_scale": torch.full((weight.shape[0], 1), self.config.factor)}


@dataclass
class _ScaleConfig(AOBaseConfig):
    pass


@register_fake_quantize_configs(_ScaleConfig)
def _infer(base_config):
    return None, _HalvingConfig()


@register_quantize_module_handler(_ScaleConfig)
def _scale_transform(module, config, *, parameter_name="weight", custom_scale=None, custom_zero_point=None):
    scale = 1.0 if custom_scale is None else custom_scale
    module.weight = nn.Parameter(module.weight.detach() * scale, requires_grad=False)
    return module


class TestQATRegistration(unittest.TestCase):
    def test_registered_fake_quantizer_is_built_from_its_config(self):
        fq = FakeQuantizerBase.from_config(_HalvingConfig(0.25))
        self.assertIsInstance(fq, _HalvingFakeQuantizer)
        self.assertTrue(torch.equal(fq(torch.ones(3)), torch.full((3,), 0.25)))

    def test_unregistered_config_still_raises(self):
        @dataclass
        class _Unknown(FakeQuantizeConfigBase):
            pass

        with self.assertRaises(ValueError):
            FakeQuantizerBase.from_config(_Unknown())

    def test_qat_config_prepares_and_converts_through_the_registries(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 4))
        weight = model[0].weight.detach().clone()
        quantize_(model, QATConfig(_ScaleConfig(), step="prepare"))
        self.assertIsInstance(model[0], FakeQuantizedLinear)
        self.assertIsInstance(model[0].weight_fake_quantizer, _HalvingFakeQuantizer)
        x = torch.randn(2, 8)
        torch.testing.assert_close(model(x), nn.functional.linear(x, weight * 0.5, model[0].bias))
        quantize_(model, QATConfig(_ScaleConfig(), step="convert"))
        self.assertIs(type(model[0]), nn.Linear)
        self.assertTrue(torch.equal(model[0].weight, weight * 0.5))

    def test_builtin_range_learning_convert_is_unchanged(self):
        from torchao.quantization import IntxWeightOnlyConfig, PerGroup
        from torchao.quantization.qat import (
            IntxFakeQuantizeConfig,
            initialize_fake_quantizers,
        )

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 8))
        config = IntxFakeQuantizeConfig(torch.int4, group_size=16, is_symmetric=True, is_dynamic=False,
                                    range_learning=True)
        quantize_(model, QATConfig(weight_config=config, step="prepare"))
        x = torch.randn(2, 32)
        initialize_fake_quantizers(model, (x,))
        fake = model(x)
        reference = copy.deepcopy(model)
        kwargs = reference[0].weight_fake_quantizer.convert_kwargs(reference[0].weight)
        self.assertEqual(set(kwargs), {"custom_scale", "custom_zero_point"})
        quantize_(model, QATConfig(IntxWeightOnlyConfig(torch.int4, granularity=PerGroup(16)), step="convert"))
        torch.testing.assert_close(model(x), fake, rtol=1e-3, atol=1e-3)


if __name__ == "__main__":
    unittest.main()
