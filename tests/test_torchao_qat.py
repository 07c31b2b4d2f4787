"""LSC through torchao's QAT vocabulary (FakeQuantizeConfigBase / FakeQuantizerBase in torchao's FakeQuantizedLinear,
QATConfig's call shape), against the project's own QAT path and with torchao's IntxFakeQuantizeConfig as baseline
in the same harness."""


import pytest
import torch
from torch import nn
from torchao.quantization import IntxUnpackedToInt8Tensor, IntxWeightOnlyConfig, PerGroup, PerTensor, quantize_
from torchao.quantization.qat import IntxFakeQuantizeConfig, initialize_fake_quantizers
from torchao.quantization.qat.linear import FakeQuantizedLinear

from qsam2_ext import QSAM2PackedTensor, qsam2_config
from qsam2_ext.integrations.torchao import LSCFakeQuantizeConfig, LSCFakeQuantizer, QSAM2QATConfig


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16))


def _train(net, x, steps=3):
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    return net.eval()


@pytest.mark.parametrize("bits,act_bits,group_size", [(2, None, None), (4, 8, 16)])
def test_lsc_through_torchaos_fake_quantized_linear_trains_and_packs_as_the_projects_own_path(bits, act_bits,
                                                                                              group_size):
    x = torch.randn(8, 32)
    base = qsam2_config(bits=bits, act_bits=act_bits, group_size=group_size)
    ours, theirs = _net(), _net()
    quantize_(ours, qsam2_config(bits=bits, act_bits=act_bits, group_size=group_size, step="prepare"))
    quantize_(theirs, QSAM2QATConfig(base, step="prepare"))
    assert isinstance(theirs[0], FakeQuantizedLinear) and isinstance(theirs[0].weight_fake_quantizer, LSCFakeQuantizer)
    _train(ours.train(), x), _train(theirs.train(), x)
    with torch.no_grad():
        fake = theirs(x)
        assert torch.equal(fake, ours(x))  # one implementation of LSC: the same forward, the same learned alpha
    quantize_(ours, qsam2_config(bits=bits, act_bits=act_bits, group_size=group_size, step="convert"))
    quantize_(theirs, QSAM2QATConfig(base, step="convert"))
    for a, b in zip((ours[0], ours[2]), (theirs[0], theirs[2])):
        assert type(b) is nn.Linear and isinstance(b.weight, QSAM2PackedTensor)
        for name in ("packed", "center", "step", "act_center", "act_step"):
            x_a, x_b = getattr(a.weight, name), getattr(b.weight, name)
            assert (x_a is None and x_b is None) or torch.equal(x_a, x_b)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), fake, rtol=1e-5, atol=1e-5)


def test_lsc_alpha_trains_in_the_quantizer_parameter_group():
    from qsam2_ext.train import parameter_groups

    net = _net()
    quantize_(net, QSAM2QATConfig(weight_config=LSCFakeQuantizeConfig(torch.int4, PerGroup(16)),
                                  activation_config=LSCFakeQuantizeConfig(torch.int8, PerTensor()), step="prepare"))
    _, quantizer = parameter_groups(net)
    alphas = [net[i].weight_fake_quantizer.lsc.alpha for i in (0, 2)] + [
        net[i].activation_fake_quantizer.lsc.alpha for i in (0, 2)]
    assert {id(p) for p in quantizer} == {id(p) for p in alphas}


@pytest.mark.parametrize("range_learning", [False, True])
def test_torchaos_intx_fake_quantizer_runs_as_baseline_in_the_same_harness(range_learning):
    x = torch.randn(8, 32)
    net = _net()
    weight = IntxFakeQuantizeConfig(torch.int4, group_size=16, is_symmetric=True, is_dynamic=not range_learning,
                                    range_learning=range_learning)
    quantize_(net, QSAM2QATConfig(weight_config=weight, step="prepare"))
    if range_learning:
        initialize_fake_quantizers(net, (x,))
    _train(net.train(), x)
    with torch.no_grad():
        fake = net(x)
    quantize_(net, QSAM2QATConfig(IntxWeightOnlyConfig(torch.int4, granularity=PerGroup(16)), step="convert"))
    assert isinstance(net[0].weight, IntxUnpackedToInt8Tensor)
    with torch.no_grad():
        torch.testing.assert_close(net(x), fake, rtol=1e-3, atol=1e-3)


def test_qat_config_round_trips_through_torchaos_config_dicts():
    from torchao.core.config import config_from_dict, config_to_dict

    config = QSAM2QATConfig(qsam2_config(bits=4, group_size=32), step="convert")
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "needs base_config"),
    (dict(base_config=qsam2_config(method="pact")), "trains LSC"),
    (dict(weight_config=LSCFakeQuantizeConfig(torch.int2, PerTensor())), "activation granularity"),
    (dict(base_config=qsam2_config(), step="calibrate"), "step"),
])
def test_bad_qat_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QSAM2QATConfig(**kwargs)
    with pytest.raises(ValueError, match="momentum applies to activations"):
        LSCFakeQuantizeConfig(torch.int2, momentum=0.9)
