"""Q-SAM2 inside NNCF 3.4 (real nncf.quantize, Pipeline, get_config / load_from_config), checked against the
core's own VRC and the torchao path on the same parameters."""

import copy

import pytest
import torch
from torch import nn

nncf = pytest.importorskip("nncf")

from torchao.quantization import quantize_  # noqa: E402

from qsam2_ext import qsam2_config  # noqa: E402
from qsam2_ext.core import FakeQuantized, LayerQuant, VRCCalibration, observing  # noqa: E402
from qsam2_ext.integrations import nncf as qn  # noqa: E402


class Net(nn.Module):
    """Each activation feeds exactly one layer, so NNCF's activation placements are the layers' inputs."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 16)
        self.conv = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        return self.conv(y.permute(0, 3, 1, 2))


def _data(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 4, 8, generator=g) for _ in range(n)]


def _all(fqn, module):
    return isinstance(module, (nn.Linear, nn.Conv2d))


@pytest.fixture(scope="module")
def quantized():
    """``nncf.quantize`` of Net (8-bit NNCF quantizers, min-max ranges, fast bias correction)."""
    torch.manual_seed(0)
    net = Net()
    return net, nncf.quantize(net, nncf.Dataset(_data()), subset_size=3)


# ------------------------------------------------------------------------------------------------ VRC
def test_vrc_algorithm_matches_core_calibration():
    torch.manual_seed(0)
    net, data = Net(), _data()
    ref = copy.deepcopy(net)
    with VRCCalibration.for_model(ref) as calib:
        for x in data:
            ref(x)
    expected = calib.apply()
    reports = qn.calibrate_vrc(net, nncf.Dataset(data))
    assert set(reports) == {"fc1", "fc2", "conv"}
    for name in reports:
        assert reports[name].tokens == expected[name].tokens == 3 * 2 * 16
        torch.testing.assert_close(net.get_submodule(name).weight, ref.get_submodule(name).weight, rtol=0, atol=0)


def test_vrc_in_nncf_pipeline_before_ptq():
    from nncf.quantization.algorithms.pipeline import Pipeline
    from nncf.quantization.algorithms.post_training.pipeline import create_ptq_pipeline
    from nncf.torch.function_hook import get_hook_storage, wrap_model
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import GraphModelWrapper

    torch.manual_seed(0)
    net, data = Net(), _data()
    ref = copy.deepcopy(net)
    qn.calibrate_vrc(ref, nncf.Dataset(data))
    vrc = qn.VRCAlgorithm(select=lambda fqn, m: fqn != "conv")
    wrapper = GraphModelWrapper(wrap_model(copy.deepcopy(net)), data[0])
    steps = [[vrc]] + create_ptq_pipeline(subset_size=3).pipeline_steps
    model = Pipeline(steps).run(wrapper, nncf.Dataset(data)).model
    assert set(vrc.reports) == {"fc1", "fc2"}
    torch.testing.assert_close(model.fc1.weight, ref.fc1.weight, rtol=0, atol=0)  # VRC ran first, then PTQ
    assert torch.equal(model.conv.weight, net.conv.weight)
    assert len(list(get_hook_storage(model).named_hooks())) == 6  # NNCF's quantizers were added after VRC


def test_vrc_error_leaves_model_untouched():
    torch.manual_seed(0)
    net = Net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(nncf.ValidationError, match="non-finite"):
        qn.calibrate_vrc(net, nncf.Dataset([torch.full((2, 4, 4, 8), float("nan"))]))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert qn._nncf.get_hook_storage(net).is_empty()  # no statistics hook left in the user's model
    with pytest.raises(ValueError, match="lam_rel"):
        qn.VRCAlgorithm(lam_rel=-1)


class SharedNet(nn.Module):
    """``shared`` is called twice (NNCF nodes ``shared/linear/0`` and ``shared/linear/1``)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.shared = nn.Linear(8, 8)

    def forward(self, x):
        return self.shared(x) + self.shared(torch.relu(self.fc(x)))


def _collected(algorithm, model, data):
    """NNCF's own statistics collection for ``algorithm`` on a wrapped ``model``: ``(wrapper, graph, points)``."""
    from nncf.quantization.algorithms.pipeline import collect_statistics
    from nncf.torch.function_hook import wrap_model
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import GraphModelWrapper

    wrapper = GraphModelWrapper(wrap_model(model), data[0])
    graph = wrapper.get_graph()
    points = collect_statistics(algorithm.get_statistic_points(wrapper, graph), wrapper, graph, nncf.Dataset(data))
    return wrapper, graph, points


def test_vrc_apply_acts_on_the_model_it_is_given():
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import GraphModelWrapper

    torch.manual_seed(0)
    data = _data()
    algorithm = qn.VRCAlgorithm()
    wrapper, graph, points = _collected(algorithm, Net(), data)
    original = copy.deepcopy(wrapper.model.state_dict())
    other = GraphModelWrapper(copy.deepcopy(wrapper.model), data[0])
    result = algorithm.apply(other, graph, points)
    assert all(torch.equal(v, original[k]) for k, v in wrapper.model.state_dict().items())
    assert not torch.equal(result.model.fc1.weight, original["fc1.weight"])


def test_vrc_shared_linear_with_one_call_ignored_is_left_unchanged():
    torch.manual_seed(0)
    data = _data()
    net = SharedNet()
    before = copy.deepcopy(net.state_dict())
    qn.calibrate_vrc(net, nncf.Dataset(data), ignored_scope=nncf.IgnoredScope(names=["shared/linear/1"]))
    assert torch.equal(net.shared.weight, before["shared.weight"])  # the ignored call would see another layer
    assert not torch.equal(net.fc.weight, before["fc.weight"])
    ref = SharedNet()
    ref.load_state_dict(before)
    reports = qn.calibrate_vrc(ref, nncf.Dataset(data))
    assert reports["shared"].tokens == 2 * 3 * 2 * 16  # both calls' rows


def test_vrc_ignored_scope_that_matches_nothing_is_an_error():
    torch.manual_seed(0)
    net = Net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(nncf.ValidationError, match="fc9"):
        qn.calibrate_vrc(net, nncf.Dataset(_data()), ignored_scope=nncf.IgnoredScope(names=["fc9/linear/0"]))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_vrc_statistics_dump_and_load_with_nncf_statistics_caching(tmp_path):
    from nncf.common.factory import StatisticsAggregatorFactory

    torch.manual_seed(0)
    data = _data()
    expected = Net()
    start = copy.deepcopy(expected.state_dict())
    qn.calibrate_vrc(expected, nncf.Dataset(data))
    algorithm = qn.VRCAlgorithm()
    wrapper, graph, _ = _collected(algorithm, Net(), data)
    wrapper.model.load_state_dict(start)
    aggregator = StatisticsAggregatorFactory.create(wrapper, nncf.Dataset(data))
    aggregator.register_statistic_points(algorithm.get_statistic_points(wrapper, graph))
    aggregator.collect_statistics(wrapper, graph)
    aggregator.dump_statistics(tmp_path / "stats")
    loaded = StatisticsAggregatorFactory.create(wrapper, nncf.Dataset(data))
    fresh = qn.VRCAlgorithm()
    loaded.register_statistic_points(fresh.get_statistic_points(wrapper, graph))
    loaded.load_statistics_from_dir(tmp_path / "stats")
    fresh.apply(wrapper, graph, loaded.statistic_points)
    for name in ("fc1", "fc2", "conv"):
        assert torch.equal(wrapper.model.get_submodule(name).weight, expected.get_submodule(name).weight)


def test_vrc_openvino_model_is_an_unsupported_backend():
    ov = pytest.importorskip("openvino")
    ov_model = ov.convert_model(Net(), example_input=_data(1)[0])
    with pytest.raises(nncf.UnsupportedBackendError):
        qn.VRCAlgorithm().get_statistic_points(ov_model, None)
    with pytest.raises(nncf.UnsupportedBackendError):
        qn.VRCAlgorithm().apply(ov_model, None, None)
    with pytest.raises(nncf.UnsupportedBackendError):
        qn.calibrate_vrc(ov_model, nncf.Dataset(_data()))


def test_calibrate_vrc_empty_dataset_is_a_clear_error():
    net = Net()
    with pytest.raises(nncf.ValidationError, match="empty"):
        qn.calibrate_vrc(net, nncf.Dataset([]))


def test_vrc_failed_collection_leaves_no_hooks_and_no_changes():
    torch.manual_seed(0)
    net = Net()
    before = copy.deepcopy(net.state_dict())
    data = _data(2) + [torch.randn(2, 4, 4, 5)]  # the third item does not fit fc1: its forward fails mid-collection
    with pytest.raises(RuntimeError):
        qn.calibrate_vrc(net, nncf.Dataset(data))
    assert qn._nncf.get_hook_storage(net).is_empty()
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_vrc_statistic_points_install_nothing_outside_collection():
    from helpers import tiny_model
    from nncf.torch.function_hook import get_hook_storage

    from qsam2_ext.sam2 import hiera

    encoder = tiny_model(64).image_encoder
    x = torch.randn(1, 3, 64, 64)
    global_hooks = dict(torch.nn.modules.module._global_forward_pre_hooks)
    wrapper, graph, _ = _collected(qn.VRCAlgorithm(), encoder, [x])  # collection, and no apply
    algorithm = qn.VRCAlgorithm()
    algorithm.get_statistic_points(wrapper, graph)  # and statistic points never collected
    assert dict(torch.nn.modules.module._global_forward_pre_hooks) == global_hooks
    assert hiera._handle is None  # SAM2's process-wide mask recorder (the torchao path's) was never started
    assert get_hook_storage(encoder).is_empty()


def test_vrc_on_sam2_skips_window_padding_rows_like_the_core():
    """NNCF VRC on a SAM2 encoder whose windows need padding equals the core's calibration with its masks."""
    from helpers import tiny_model

    from qsam2_ext.sam2 import hiera

    model = tiny_model(64)
    encoder = model.image_encoder
    batches = [torch.randn(1, 3, 64, 64) for _ in range(2)]
    ref, original = copy.deepcopy(encoder), copy.deepcopy(encoder)
    with hiera.padding_masks(), VRCCalibration.for_model(ref, row_masks=hiera.row_mask) as calib:
        for x in batches:
            ref(x)
    expected = calib.apply()
    reports = qn.calibrate_vrc(encoder, nncf.Dataset(batches))
    assert set(reports) == set(expected)
    for name in reports:
        assert reports[name].tokens == expected[name].tokens, name
        torch.testing.assert_close(encoder.get_submodule(name).weight, ref.get_submodule(name).weight,
                                   rtol=1e-5, atol=1e-6)
    # the masks mattered: NNCF's generic algorithm (no masks) counts padding rows in some attention layers
    class Counting(qn.VarianceReducedCalibration):
        rows = {}

        def _on_update(self, weight_name, weight, new_weight, gram, num_rows, lam):
            self.rows[weight_name[: -len(".weight")]] = int(num_rows)

    from nncf.quantization.algorithms.pipeline import Pipeline
    from nncf.torch.function_hook import wrap_model
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import GraphModelWrapper

    Pipeline([[Counting()]]).run(GraphModelWrapper(wrap_model(original), batches[0]), nncf.Dataset(batches))
    assert any(Counting.rows[name] > reports[name].tokens for name in reports if ".attn." in name)


# ------------------------------------------------------------------------------------------------ LSC hooks
def _float_twin(model):
    """A plain Net with the float parameters of an NNCF model (NNCF's bias correction included)."""
    twin = Net()
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if "__nncf_hooks" not in k})
    return twin


def _lsc(quantized, bits, act_bits, method="lsc", keep_nncf=False):
    model = copy.deepcopy(quantized)
    cfg = LayerQuant(bits=bits, act_bits=act_bits, method=method)
    summary = qn.attach_qsam2(model, _data(1)[0], {n: cfg for n in ("fc1", "fc2", "conv")}, keep_nncf=keep_nncf)
    return model, cfg, summary


@pytest.mark.parametrize("method,bits,act_bits", [("lsc", 2, 8), ("lsc", 4, 4), ("lsc", 3, None), ("lsq", 2, 4)])
def test_nncf_hooks_and_torchao_path_agree_through_training(quantized, method, bits, act_bits):
    model, cfg, _ = _lsc(quantized[1], bits, act_bits, method)
    ref = _float_twin(model)
    quantize_(ref, qsam2_config(bits=bits, act_bits=act_bits, method=method, step="prepare"),
              filter_fn=lambda m, fqn: isinstance(m, (nn.Linear, nn.Conv2d)))
    assert sum(isinstance(m, FakeQuantized) for m in ref.modules()) == 3
    data = _data(4, seed=1)
    for m in (model, ref):
        with observing(m), torch.no_grad():
            m(data[0])
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, ref)]
    for x in data[1:]:  # the NNCF QAT flow: .train(), ordinary optimizer steps
        outs = []
        for m, opt in zip((model.train(), ref.train()), opts):
            opt.zero_grad()
            out = m(x)
            out.pow(2).mean().backward()
            opt.step()
            outs.append(out.detach())
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    alphas = [p for n, p in model.named_parameters() if n.endswith("quantizer.alpha")]
    assert len(alphas) == (6 if act_bits else 3) or method == "lsq"
    torch.testing.assert_close(model.eval()(data[0]), ref.eval()(data[0]), rtol=0, atol=0)


def test_attach_replaces_nncf_quantizers_it_covers(quantized):
    from nncf.torch.function_hook import get_hook_storage

    model, _, summary = _lsc(quantized[1], 2, 8, keep_nncf=True)
    # NNCF put 3 weight + 3 activation quantizers, each on a tensor a Q-SAM2 hook now quantizes
    assert len(summary["removed_nncf_quantizers"]) == 6 and summary["kept_nncf_quantizers"] == []
    names = [n for n, _ in get_hook_storage(model).named_hooks()]
    assert sorted(names) == sorted(["post_hooks.fc1:weight__0.0", "post_hooks.fc2:weight__0.0",
                                    "post_hooks.conv:weight__0.0", "pre_hooks.fc1/linear/0__0.0",
                                    "pre_hooks.fc2/linear/0__0.0", "pre_hooks.conv/conv2d/0__0.0"])
    model, _, summary = _lsc(quantized[1], 2, None, keep_nncf=True)  # weight-only: NNCF keeps its activations
    assert len(summary["removed_nncf_quantizers"]) == 3 and len(summary["kept_nncf_quantizers"]) == 3


def test_attach_bad_input_changes_nothing(quantized):
    model = copy.deepcopy(quantized[1])
    before = [n for n, _ in qn._nncf.get_hook_storage(model).named_hooks()]
    cfg = LayerQuant(bits=2)
    with pytest.raises(ValueError, match="not Linear/Conv2d layers called"):
        qn.attach_qsam2(model, _data(1)[0], {"fc1": cfg, "fc3": cfg})
    assert [n for n, _ in qn._nncf.get_hook_storage(model).named_hooks()] == before
    qn.attach_qsam2(model, _data(1)[0], {"fc1": cfg})
    with pytest.raises(RuntimeError, match="already carries"):
        qn.attach_qsam2(model, _data(1)[0], {"fc2": cfg})


def test_attach_keeps_nncf_graph_whole_for_nncf_steps(quantized):
    """After attach_qsam2, NNCF still finds every hooked layer's weight and input, and its own SmoothQuant,
    MinMax (nncf.quantize, TRANSFORMER) and strip run on the model."""
    from nncf.torch.model_graph_manager import get_const_node

    model, _, _ = _lsc(quantized[1], 4, 8, keep_nncf=False)
    x = _data(1)[0]
    with observing(model), torch.no_grad():
        model(x)
    graph = nncf.build_graph(model, example_input=x)
    layers = graph.get_nodes_by_metatypes(qn._nncf.LINEAR_METATYPES)
    assert {get_const_node(n, 1, graph).layer_attributes.name for n in layers} == {"fc1.weight", "fc2.weight",
                                                                                  "conv.weight"}
    assert all(len(graph.get_input_edges(n)) == 3 for n in layers)  # input, weight, bias
    model.eval()
    expected = model(x)
    q = nncf.quantize(model, nncf.Dataset(_data()), subset_size=3, model_type=nncf.ModelType.TRANSFORMER)
    kinds = [type(h).__name__ for _, h in qn._nncf.get_hook_storage(q).named_hooks()]
    assert kinds.count("SQMultiply") >= 1 and kinds.count("QSAM2FakeQuantize") == 6
    assert kinds.count("SymmetricQuantizer") == 3  # MinMax's weight quantizers on the three layers
    stripped = nncf.strip(q, do_copy=True, example_input=x)
    hooks = [h for _, h in qn._nncf.get_hook_storage(stripped).named_hooks()]
    assert not any(isinstance(h, qn._nncf.BaseQuantizer) for h in hooks)  # NNCF's quantizers became torch's
    assert sum(isinstance(h, qn.QSAM2FakeQuantize) for h in hooks) == 6
    with torch.no_grad():
        out = stripped(x)
    assert (out - expected).abs().max() < 0.2 * expected.abs().max()  # NNCF's 8-bit steps on top of W4A8: close


# ------------------------------------------------------------------------------------------------ save / bake
def test_get_config_load_from_config_round_trip_is_bit_exact(quantized):
    from nncf.torch import get_config, load_from_config

    model, _, _ = _lsc(quantized[1], 2, 8, keep_nncf=True)
    with observing(model), torch.no_grad():
        model(_data(1)[0])
    model.fc1.bias.data += 0.1  # trained state, not the initial one
    config, state = get_config(model), model.state_dict()
    with pytest.raises(Exception, match="untrusted"):
        load_from_config(Net(), config)  # NNCF refuses modules outside its allow-list by default
    restored = load_from_config(Net(), config, allowed_modules=qn.ALLOWED_MODULES)
    restored.load_state_dict(state)
    x = _data(1, seed=5)[0]
    assert torch.equal(restored.eval()(x), model.eval()(x))


@pytest.mark.parametrize("bits,act_bits", [(2, 8), (3, 4), (8, None)])
def test_bake_reproduces_fake_quant_and_restores(quantized, bits, act_bits):
    model, _, _ = _lsc(quantized[1], bits, act_bits)
    x = _data(1, seed=3)[0]
    with observing(model), torch.no_grad():
        model(x)
    model.eval()
    expected = model(x)
    baked = qn.bake(model)
    assert set(baked) == {"fc1.weight", "fc2.weight", "conv.weight"}
    assert model.fc1.weight.dtype == (torch.uint8 if bits <= 4 else torch.int8)
    assert model.fc1.weight.numel() == (32 * 8 // 2 if bits <= 4 else 32 * 8)
    assert torch.equal(model(x), expected)
    restored = qn.restore(Net(), qn.save(model))
    assert torch.equal(restored.eval()(x), expected)
    with pytest.raises(ValueError, match="no Q-SAM2 weight quantizer"):
        qn.bake(restored)


# ------------------------------------------------------------------------------------------------ SAM2 rows
@pytest.mark.parametrize("method,bits,act_bits", [("qsam2", 2, 8), ("nncf", 2, 4)])
def test_prepare_train_finish_on_a_small_sam2(tmp_path, method, bits, act_bits):
    """The benchmark's entry points on a real (shrunk) SAM2: prepare through NNCF, the shared loop, finish,
    evaluate-ready image model and a video model rebuilt through NNCF's save/restore."""
    from helpers import tiny_model, write_sa1b
    from nncf.torch.quantization.layers import BaseQuantizer

    from qsam2_ext.sam2.data import open_dataset
    from qsam2_ext.train import TrainConfig, parameter_groups, train

    write_sa1b(tmp_path / "data", n=2, objects=2)
    model = tiny_model(64)
    batches = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    qn.prepare_nncf_qat(model, batches, bits, act_bits, method=method)
    hooks = dict(qn._nncf.get_hook_storage(model.image_encoder).named_hooks())
    layers = [n for n, m in model.named_modules() if qn.image_encoder_layers(m, n)]
    if method == "qsam2":
        weight_hooks = [h for h in hooks.values() if isinstance(h, qn.QSAM2FakeQuantize) and h.is_weight]
        assert len(weight_hooks) == len(layers) and all(h.quantizer.bits == bits for h in weight_hooks)
        assert not any(isinstance(h, BaseQuantizer) for h in hooks.values())  # keep_nncf=False
    else:
        nncf_q = [h for h in hooks.values() if isinstance(h, BaseQuantizer)]
        assert sorted({h.num_bits for h in nncf_q}) == sorted({bits, act_bits})
        assert sum(h.num_bits == bits for h in nncf_q) == len(layers)  # one weight quantizer per target layer
    _, quantizer = parameter_groups(model)
    before = [p.detach().clone() for p in quantizer]
    assert before
    config = TrainConfig(steps=2, batch_size=2, lr=1e-4, quantizer_lr=1e-2, num_workers=0)
    train(model, open_dataset("sa1b", str(tmp_path / "data")), config, str(tmp_path / "run"), progress=False)
    assert any(not torch.equal(p, b) for p, b in zip(quantizer, before))  # quantizer parameters learned
    qn.finish_nncf_qat(model)
    with torch.no_grad():
        expected = model.image_encoder(batches[0])["vision_features"]
    video = qn.transplant(model, tiny_model(64, video=True, seed=1))
    with torch.no_grad():
        assert torch.equal(video.eval().image_encoder(batches[0])["vision_features"], expected)


# ------------------------------------------------------------------------------------------------ recipes
def test_quantize_with_recipe_maps_layer_plans_to_nncf(tmp_path):
    from helpers import tiny_model

    from qsam2_ext.recipes import RecipeError, load_recipe

    model = tiny_model(64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(1, 3, 64, 64) for _ in range(2)]
    with pytest.raises(ValueError, match="outside image_encoder"):
        qn.quantize_with_recipe(model, "sam2.1_hiera_t_w2a8", batches)
    recipe = load_recipe("sam2.1_hiera_t_w2a8")
    q = qn.quantize_with_recipe(model, recipe, batches, outside="float")
    planned = {p.fqn[len("image_encoder."):]: p for p in recipe.resolve(model)
               if not p.skip and p.fqn.startswith("image_encoder.")}
    hooks = [(n, h) for n, h in qn._nncf.get_hook_storage(q.image_encoder).named_hooks()
             if isinstance(h, qn.QSAM2FakeQuantize)]
    weights = {qn._nncf.decode_hook_name(n)[1][: -len(".weight")]: h for n, h in hooks if h.is_weight}
    assert set(weights) == set(planned) and all(h.quantizer.bits == 2 for h in weights.values())
    assert all(h.quantizer.bits == 8 for _, h in hooks if not h.is_weight)
    # VRC ran (recipe: calibration.vrc over the encoder) before NNCF's PTQ: quantized weights moved
    assert not torch.equal(q.image_encoder.trunk.blocks[0].attn.qkv.weight, before["image_encoder.trunk.blocks.0.attn.qkv.weight"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input model is untouched
    with torch.no_grad():
        assert torch.isfinite(q.image_encoder(batches[0])["vision_features"]).all()
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: sam2.1_hiera_t_w2a8\nrules:\n  - match: image_encoder.trunk.blocks.0.attn.qkvv\n    bits: 4\n")
    with pytest.raises(RecipeError, match="matches no layer"):
        qn.quantize_with_recipe(model, str(bad), batches, outside="float")


# ------------------------------------------------------------------------------------------------ export
def test_hooks_see_the_same_tensors_under_export_tracing(quantized):
    model, _, _ = _lsc(quantized[1], 4, 8)
    x = _data(1)[0]
    with observing(model), torch.no_grad():
        model(x)
    qn.bake(model)
    assert qn.check_hook_tensors(model, x) == 6  # 3 decompressors + 3 input quantizers, each once


def test_decompressor_keeps_int8_codes_when_they_do_not_pair_up():
    from qsam2_ext.core import LSCQuantizer, WeightGranularity

    w = torch.randn(3, 5)
    hook = qn.QSAM2FakeQuantize(LSCQuantizer(2, WeightGranularity.for_weight(w)))
    dec, stored = qn.hooks.decompressor_for(hook, w)
    assert not dec.packed and stored.dtype == torch.int8 and stored.shape == w.shape
    assert torch.equal(dec(stored), hook(w))
