"""Q-SAM2 through torchao's own API: quantize_, FqnToConfig, QATConfig, config (de)serialization, the packed
tensor under compile / export / torch.save / safetensors."""

import math

import pytest
import torch
from torch import nn
from torchao.core.config import config_from_dict, config_to_dict
from torchao.quantization import FqnToConfig, quantize_

import qsam2_ext
from qsam2_ext import QSAM2Config, QSAM2PackedTensor, VRCConfig, qsam2_config, vrc_config
from qsam2_ext.core import FakeQuantized, VRCCalibration, observing


class Net(nn.Module):
    """Linear and 1x1/3x3 conv layers, the layer kinds SAM2's encoder, neck and decoder use."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 16)

    def forward(self, x):
        x = self.dw(torch.relu(self.conv(x)))
        x = x.permute(0, 2, 3, 1)
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def _all_layers(m, fqn):
    return isinstance(m, (nn.Linear, nn.Conv2d))


def _sqnr(ref, out):
    return 10 * math.log10(float((ref**2).sum() / ((ref - out) ** 2).sum()))


def _prepared(config, seed=0, steps=3):
    torch.manual_seed(seed)
    net = Net()
    x = torch.randn(4, 16, 8, 8)
    quantize_(net, config, filter_fn=_all_layers)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    for _ in range(steps):  # a little QAT so learned parameters move away from their initial values
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    return net.eval(), x


# ------------------------------------------------------------------ prepare / convert / one-shot
@pytest.mark.parametrize("method", ["lsc", "minmax", "pact", "lsq"])
@pytest.mark.parametrize("bits,act_bits,group_size", [(2, None, None), (3, 8, 16), (4, 4, None), (8, 8, 8)])
def test_fake_quant_and_converted_outputs_agree_over_seeds(method, bits, act_bits, group_size):
    for seed in range(3):
        cfg = dict(bits=bits, act_bits=act_bits, group_size=group_size, method=method)
        net, x = _prepared(qsam2_config(step="prepare", **cfg), seed)
        assert sum(isinstance(m, FakeQuantized) for m in net.modules()) == 4
        with torch.no_grad():
            fake = net(x)
        quantize_(net, qsam2_config(step="convert", **cfg), filter_fn=_all_layers)
        assert not any(isinstance(m, FakeQuantized) for m in net.modules())
        assert all(isinstance(m.weight, QSAM2PackedTensor) for m in (net.conv, net.dw, net.fc1, net.fc2))
        with torch.no_grad():
            real = net(x)
        torch.testing.assert_close(real, fake, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,min_sqnr_db", [(2, 3.0), (3, 9.0), (4, 14.0), (8, 35.0)])
def test_one_shot_sqnr_per_bit_width(bits, min_sqnr_db):
    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(8, 16, 8, 8)
    with torch.no_grad():
        ref = net(x)
    quantize_(net, qsam2_config(bits=bits), filter_fn=_all_layers)
    with torch.no_grad():
        out = net(x)
    # Uniform-quantization theory gives ~6 dB per bit; thresholds leave room for clipping and layer stacking.
    assert _sqnr(ref, out) > min_sqnr_db


def test_activation_quantization_static_after_qat_dynamic_one_shot():
    net, x = _prepared(qsam2_config(bits=8, act_bits=4, step="prepare"))
    quantize_(net, qsam2_config(bits=8, act_bits=4, step="convert"), filter_fn=_all_layers)
    assert net.fc1.weight.act_center is not None and net.fc1.weight.act_bits == 4
    one_shot = Net()
    quantize_(one_shot, qsam2_config(bits=8, act_bits=4), filter_fn=_all_layers)
    w = one_shot.fc1.weight
    assert w.act_center is None and w.act_bits == 4
    # dynamic per-token: each token is quantized onto 16 levels between its own min and max
    x = torch.randn(5, 64)
    xq = w.quantize_input(x, -1)
    for row, qrow in zip(x, xq):
        levels = torch.linspace(float(row.min()), float(row.max()), 16)
        assert torch.allclose(qrow[:, None].sub(levels).abs().min(1).values, torch.zeros(64), atol=1e-5)


def test_convert_uses_learned_parameters_without_recomputation():
    net, x = _prepared(qsam2_config(bits=2, step="prepare"), steps=0)
    with torch.no_grad():
        net.fc1.weight_quantizer.alpha.mul_(0.5)  # a "learned" clip, far from the initial one
    expected = net.fc1.weight_quantizer.encode(net.fc1.weight)
    quantize_(net, qsam2_config(bits=2, step="convert"), filter_fn=_all_layers)
    packed = net.fc1.weight
    assert torch.equal(packed.codes(), expected[0])
    assert torch.equal(packed.center, expected[1]) and torch.equal(packed.step, expected[2])


def test_convert_leaves_unprepared_layers_and_checks_all_before_changing_any():
    torch.manual_seed(0)
    net = Net()
    prepare = qsam2_config(act_bits=8, step="prepare")
    quantize_(net, FqnToConfig({"fc1": prepare, "re:fc2": prepare}), filter_fn=None)
    net.eval()
    with observing(net.fc1):
        net.fc1(torch.randn(2, 32))  # only fc1 sees data: fc2 has no activation statistics
    with pytest.raises(RuntimeError, match=r"fc2: LSCQuantizer has no activation statistics"):
        qsam2_ext.check_ready(net)
    with pytest.raises(RuntimeError, match=r"1 prepared layer\(s\) are not ready, nothing was changed"):
        quantize_(net, qsam2_config(act_bits=8, step="convert"))
    assert isinstance(net.fc1, FakeQuantized) and isinstance(net.fc2, FakeQuantized)
    with observing(net):
        net(torch.randn(2, 16, 4, 4))
    quantize_(net, qsam2_config(act_bits=8, step="convert"))
    assert isinstance(net.fc2.weight, QSAM2PackedTensor) and not isinstance(net.conv.weight, QSAM2PackedTensor)


def test_group_size_fallback_for_hiera_b_plus_dims():
    lin = nn.Sequential(nn.Linear(112, 8), nn.Linear(128, 8))
    quantize_(lin, qsam2_config(bits=4, group_size=64))
    assert lin[0].weight.center.shape == (8, 1)  # 64 does not divide 112: per output channel
    assert lin[1].weight.center.shape == (8, 2)
    assert "per-channel" in repr(lin[0]) and "group_size=64" in repr(lin[1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bits=5), "bits"), (dict(bits=2, act_bits=6), "act_bits"), (dict(method="adaround"), "unknown method"),
        (dict(group_size=0), "group_size"), (dict(group_size=-32), "group_size"), (dict(step="calibrate"), "step"),
        (dict(method="lsq", alpha_init=2.0), "alpha_init applies"), (dict(momentum=1.5), "momentum"),
        (dict(act_alpha_init=2.0), "needs act_bits"),
    ],
)
def test_bad_configs_fail_before_any_layer_changes(kwargs, match):
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        quantize_(net, qsam2_config(**kwargs))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="lam_rel"):
        vrc_config(step="convert", lam_rel=-1)
    with pytest.raises(ValueError, match="step"):
        vrc_config(step=None)


def test_preparing_twice_is_refused_at_the_first_layer():
    net = Net()
    quantize_(net, qsam2_config(step="prepare"))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError, match="already prepared"):
        quantize_(net, qsam2_config(step="prepare"))
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


# ------------------------------------------------------------------ FqnToConfig and config serialization
def test_fqn_to_config_exact_regex_and_skip():
    net = Net()
    cfg = FqnToConfig({
        "fc1": qsam2_config(bits=4),
        "re:fc.*": qsam2_config(bits=2),   # fc2 (fc1 already matched exactly)
        "conv": None,                      # explicitly skipped
        "re:d.*": qsam2_config(bits=8),    # the depthwise conv
    })
    quantize_(net, cfg, filter_fn=None)
    assert net.fc1.weight.bits == 4 and net.fc2.weight.bits == 2 and net.dw.weight.bits == 8
    assert type(net.conv.weight) is nn.Parameter and not isinstance(net.conv.weight, QSAM2PackedTensor)


@pytest.mark.parametrize("config", [
    QSAM2Config(bits=3, act_bits=8, group_size=32, method="pact", step="prepare", scale_dtype=torch.bfloat16),
    QSAM2Config(alpha_init=1.3, act_bits=4, act_alpha_init=2.5, momentum=0.95, act_per_channel=True),
    VRCConfig(step="convert", lam_rel=3e-3),
])
def test_config_dict_round_trip(config):
    d = config_to_dict(config)
    assert d["_type"] == type(config).__name__
    assert config_from_dict(d) == config


# ------------------------------------------------------------------ torchao QATConfig interop
def test_torchao_range_learning_qat_scales_are_used_by_our_convert():
    from torchao.quantization import PerGroup
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig, initialize_fake_quantizers

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    weight_config = IntxFakeQuantizeConfig(torch.int2, PerGroup(32), is_dynamic=False, range_learning=True)
    quantize_(model, QATConfig(weight_config=weight_config, step="prepare"))
    x = torch.randn(16, 64)
    initialize_fake_quantizers(model, (x,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    learned = model[0].weight_fake_quantizer.scale.detach().clone()
    with torch.no_grad():
        fake = model(x)
    quantize_(model, QATConfig(QSAM2Config(bits=2), step="convert"))
    packed = model[0].weight
    assert isinstance(packed, QSAM2PackedTensor)
    torch.testing.assert_close(packed.step, learned.reshape(packed.step.shape))
    with torch.no_grad():
        torch.testing.assert_close(model(x), fake, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the packed tensor
@pytest.mark.parametrize("act_bits,step", [(None, None), (8, None), (4, "convert")])
def test_flatten_equals_torchaos_generic_flatten(act_bits, step):
    """Our fast __tensor_flatten__ (dynamo's guards call it on every compiled call) returns exactly what
    TorchAOBaseTensor's generic one derives from the name lists: no weight, dynamic and static input grids; weights
    with quantized inputs add the switches that pick their traced expression (``_trace_mode``)."""
    from torchao.utils import TorchAOBaseTensor

    from qsam2_ext.integrations.torchao.packed_tensor import _trace_mode

    if step == "convert":
        net, _ = _converted_net(bits=2, act_bits=act_bits)
    else:
        net = Net()
        quantize_(net, qsam2_config(bits=2, act_bits=act_bits), filter_fn=_all_layers)
    for layer in (net.conv, net.fc1):
        names, ctx = layer.weight.__tensor_flatten__()
        assert ctx.pop("trace_mode", None) == (None if act_bits is None else _trace_mode())
        assert (names, ctx) == TorchAOBaseTensor.__tensor_flatten__(layer.weight)
    assert ("act_center" in net.fc1.weight.__tensor_flatten__()[0]) == (step == "convert")


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_packed_storage_is_bits_over_8_bytes_per_weight_plus_grids(bits):
    lin = nn.Linear(768, 384).to(torch.bfloat16)
    quantize_(lin, qsam2_config(bits=bits))
    w = lin.weight
    assert w.packed.dtype == torch.uint8 and w.packed.numel() == 384 * 768 * bits // 8
    assert w.storage_bytes() == 384 * 768 * bits // 8 + 2 * 384 * 2  # bf16 center + step per row
    assert w.storage_bytes() <= (bits / 16 + 0.01) * 384 * 768 * 2


def _converted_net(bits=2, act_bits=8):
    net, x = _prepared(qsam2_config(bits=bits, act_bits=act_bits, step="prepare"))
    quantize_(net, qsam2_config(bits=bits, act_bits=act_bits, step="convert"), filter_fn=_all_layers)
    return net, x


def test_torch_save_and_weights_only_load(tmp_path):
    net, x = _converted_net()
    path = qsam2_ext.save_quantized(net, tmp_path / "q.pt")
    sd = torch.load(path, weights_only=True)["model"]  # safe globals registered by qsam2_ext
    fresh = qsam2_ext.load_quantized(Net(), sd)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


def test_safetensors_round_trip(tmp_path):
    net, x = _converted_net(bits=3, act_bits=4)
    path = qsam2_ext.save_quantized(net, tmp_path / "q.safetensors")
    fresh = qsam2_ext.load_quantized(Net(), path)
    assert isinstance(fresh.fc1.weight, QSAM2PackedTensor) and fresh.fc1.weight.bits == 3
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


def test_load_rejects_mismatched_or_malformed_checkpoints(tmp_path):
    net, _ = _converted_net()
    sd = net.state_dict()
    other = nn.Sequential(nn.Linear(3, 3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="missing keys"):
        qsam2_ext.load_quantized(other, sd)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    torch.save(dict(sd), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="official SAM2 checkpoint format"):
        qsam2_ext.load_quantized(Net(), tmp_path / "bare.pt")
    with pytest.raises(FileNotFoundError):
        qsam2_ext.load_quantized(Net(), tmp_path / "absent.pt")
    (tmp_path / "taken.pt").mkdir()
    with pytest.raises(OSError):  # the target is a directory: the rename fails, nothing is left behind
        qsam2_ext.save_quantized(net, tmp_path / "taken.pt")
    assert not list(tmp_path.glob(".*tmp"))
    assert qsam2_ext.save_quantized(net, tmp_path / "new" / "dir" / "q.pt").is_file()  # parents are created


def test_quantizing_leaves_inductors_options_as_the_user_set_them():
    """torchao's own configs set its recommended inductor options process-wide by default (coordinate-descent
    tuning among them); ours change no compiler setting, so a model compiles as the user configured inductor."""
    from torch._inductor import config

    before = config.get_config_copy()
    net, _ = _converted_net()
    quantize_(Net(), qsam2_config(bits=4), filter_fn=_all_layers)  # one-shot
    assert isinstance(net.fc1.weight, QSAM2PackedTensor)
    assert config.get_config_copy() == before


def test_compile_fullgraph_and_export():
    net, x = _converted_net()
    with torch.no_grad():
        eager = net(x)
        compiled = torch.compile(net, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,act_bits", [(2, None), (8, 8)])
def test_compile_after_unwrapping_the_packed_weights(bits, act_bits, tmp_path):
    """torchao's unwrap_tensor_subclass (applied before torch.compile) turns packed Linear weights into plain
    tensors and the compiled graph rebuilds the subclass inside: the compiled model still computes the eager
    reference, in one graph. Saving such a model is refused: its keys would load into no float model."""
    from torchao.utils import unwrap_tensor_subclass

    net, x = _converted_net(bits, act_bits)
    with torch.no_grad():
        eager = net(x)
    unwrap_tensor_subclass(net)
    assert not any(isinstance(p, QSAM2PackedTensor) for p in net.fc1.parameters())
    with pytest.raises(ValueError, match="fc1 went through torchao's unwrap_tensor_subclass"):
        qsam2_ext.save_quantized(net, tmp_path / "q.pt")
    assert not list(tmp_path.iterdir())
    torch._dynamo.reset()
    with torch.inference_mode():
        torch.testing.assert_close(net(x), eager, rtol=0, atol=0)
        compiled = torch.compile(net, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_compiled_graphs_keep_the_dequantize_expression_not_the_eager_kernel_op(monkeypatch):
    """Traced for torch.compile, a packed Linear stays the dequantize expression that inductor fuses; only eager
    calls reach the kernel op. Here the kernels claim every input and the op fails, so any use of it shows."""
    from qsam2_ext import kernels

    net, x = _converted_net()
    with torch.no_grad():
        reference = net(x)

    def op(*args, **kwargs):
        raise RuntimeError("eager kernel op called")

    monkeypatch.setattr(kernels, "supports", lambda x, weight: True)
    monkeypatch.setattr(kernels, "packed_linear", op)
    torch._dynamo.reset()
    with torch.inference_mode():  # as SAM2 inference runs (no_grad traces the same way)
        with pytest.raises(RuntimeError, match="eager kernel op"):
            net(x)
        compiled = torch.compile(net)(x)
    torch.testing.assert_close(compiled, reference, rtol=1e-5, atol=1e-5)


def test_autocast_casts_inputs_of_packed_layers_as_it_does_for_float_layers():
    """Our F.linear handler runs before autocast would cast the input: it casts it itself, so a float32 model
    under bf16 autocast computes in bf16 as its float twin does."""
    net, _ = _converted_net()
    w, x = net.fc1.weight, torch.randn(4, 8, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.linear(x, w, net.fc1.bias)
    assert y.dtype == torch.bfloat16
    xb = x.to(torch.bfloat16)
    expected = torch.nn.functional.linear(w.quantize_input(xb, -1), w.dequantize(torch.bfloat16),
                                          net.fc1.bias.to(torch.bfloat16))
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


# ------------------------------------------------------------------ VRC through quantize_
def test_vrc_through_quantize_matches_core_and_reports():
    torch.manual_seed(0)
    net = Net()
    reference = Net()
    reference.load_state_dict(net.state_dict())
    batches = [torch.randn(2, 16, 6, 6) for _ in range(3)]
    linear_like = lambda m, fqn: isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))
    quantize_(net, vrc_config(step="prepare"), filter_fn=linear_like)
    with torch.no_grad():
        for b in batches:
            net(b)
    quantize_(net, vrc_config(step="convert", lam_rel=1e-2), filter_fn=linear_like)
    reports = qsam2_ext.vrc_reports(net)
    assert sorted(reports) == ["conv", "fc1", "fc2"] and reports["fc1"].layer == "fc1"
    with VRCCalibration.for_model(reference) as calib, torch.no_grad():
        for b in batches:
            reference(b)
    calib.apply(1e-2)
    for name in ("conv", "fc1", "fc2"):
        torch.testing.assert_close(getattr(net, name).weight, getattr(reference, name).weight)
    assert not net.fc1._forward_pre_hooks  # observers removed


def test_vrc_convert_without_data_changes_nothing():
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    quantize_(net, vrc_config(step="prepare"))
    net.fc1(torch.randn(3, 32))  # fc2 never sees data
    with pytest.raises(RuntimeError, match="saw no calibration data"):
        quantize_(net, vrc_config(step="convert"))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    net(torch.randn(2, 16, 4, 4))  # the observers stay for more data: a finished calibration releases them
    quantize_(net, vrc_config(step="convert"))
