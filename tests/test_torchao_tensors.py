"""Inside torchao: configs in torchao's field conventions, torchao's own intx tensor where it stores the grid bit
for bit, the packed tensor under the checks torchao's tensor tests make (layout ops, from_hp, to, deepcopy,
load_state_dict(assign=True), safetensors, export), handlers that quantize or raise, and the adapter's imports."""

import ast
import copy
import json
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchao.core.config import config_from_dict, config_to_dict
from torchao.quantization import (
    FqnToConfig,
    IntxUnpackedToInt8Tensor,
    IntxWeightOnlyConfig,
    PerAxis,
    PerGroup,
    PerRow,
    quantize_,
)
from torchao.quantization.quantize_.common.quantization_step import QuantizationStep
from torchao.quantization.utils import compute_error

from qsam2_ext import QSAM2Config, QSAM2PackedTensor, VRCConfig, qsam2_config, vrc_config
from qsam2_ext.core import LSCQuantizer, VRCCalibration, WeightGranularity
from qsam2_ext.integrations.torchao.weights import exact_in_intx

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ configs
def test_short_forms_map_onto_torchaos_fields():
    short = qsam2_config(bits=4, act_bits=8, group_size=32, step="prepare")
    full = QSAM2Config(weight_dtype=torch.int4, granularity=PerGroup(32), activation_dtype=torch.int8,
                       step=QuantizationStep.PREPARE)
    assert short == full
    assert (full.bits, full.act_bits, full.group_size, full.step) == (4, 8, 32, "prepare")
    assert QSAM2Config().granularity == PerAxis(0) and QSAM2Config().weight_dtype == torch.int2
    assert QSAM2Config().version == 1


@pytest.mark.parametrize("config", [
    QSAM2Config(weight_dtype=torch.int4, granularity=PerGroup(16), method="pact", packing_format="unpacked_to_int8"),
    VRCConfig(step="convert", base_config=QSAM2Config(weight_dtype=torch.int3)),
    VRCConfig(step="prepare", base_config=IntxWeightOnlyConfig(torch.int4)),
])
def test_new_fields_round_trip_through_torchaos_config_dicts(config):
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=2, weight_dtype=torch.int2), "not both"),
    (dict(weight_dtype=torch.int5), "weight_dtype"),
    (dict(weight_dtype=torch.uint4), "weight_dtype"),
    (dict(granularity=PerAxis(1)), "granularity"),
    (dict(granularity=PerRow()), "granularity"),
    (dict(group_size=32, granularity=PerAxis(0)), "not both"),
    (dict(packing_format="tile_packed_to_4d"), "packing_format"),
    (dict(packing_format="unpacked_to_int8"), "zero-centred"),  # LSC centres its grid on the mean
    (dict(packing_format="unpacked_to_int8", method="pact", act_bits=8), "weight-only"),
    (dict(step="prepare_for_loading"), "step"),
    (dict(version=2), "version"),
])
def test_bad_torchao_style_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QSAM2Config(**kwargs)


# ------------------------------------------------------------------ torchao's intx tensor, bit for bit
@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("granularity", [PerAxis(0), PerGroup(16)])
def test_torchao_intx_tensor_stores_zero_centred_grids_bit_for_bit(bits, dtype, granularity):
    torch.manual_seed(bits)
    ours = nn.Sequential(nn.Linear(64, 32), nn.Conv2d(8, 16, 1)).to(dtype)
    theirs = copy.deepcopy(ours)
    cfg = dict(weight_dtype=getattr(torch, f"int{bits}"), method="pact")
    conv_only_per_axis = lambda m, fqn: isinstance(m, nn.Linear) or (  # noqa: E731
        isinstance(m, nn.Conv2d) and isinstance(granularity, PerAxis))
    quantize_(ours, QSAM2Config(granularity=granularity, **cfg), filter_fn=conv_only_per_axis)
    quantize_(theirs, QSAM2Config(granularity=granularity, packing_format="unpacked_to_int8", **cfg),
              filter_fn=conv_only_per_axis)
    assert isinstance(theirs[0].weight, IntxUnpackedToInt8Tensor)
    for packed, intx in [(ours[0].weight, theirs[0].weight)] + (
            [(ours[1].weight, theirs[1].weight)] if isinstance(granularity, PerAxis) else []):
        assert torch.equal(intx.qdata, packed.codes())
        # independent reference: (q + 1/2) * step is exact in float64, then rounded once to the weight's dtype
        out, groups = packed.center.shape
        assert torch.equal(packed.center, torch.zeros_like(packed.center))
        levels = (packed.codes().reshape(out, groups, -1).double() + 0.5) * packed.step.double().unsqueeze(-1)
        reference = levels.reshape(packed.shape).to(dtype)
        assert torch.equal(intx.dequantize(), reference) and torch.equal(packed.dequantize(), reference)
    x = torch.randn(3, 64, dtype=dtype)
    assert torch.equal(ours[0](x), theirs[0](x))


def test_mean_centred_grids_are_not_exact_in_torchaos_expression():
    torch.manual_seed(0)
    w = nn.Linear(256, 64).weight.detach()
    quantizer = LSCQuantizer(4, WeightGranularity.for_weight(w))
    _, center, step = quantizer.encode(w)
    assert not exact_in_intx(center, step, 4, torch.float32)  # about a third of the levels round differently
    assert exact_in_intx(torch.zeros_like(center), step, 4, torch.float32)


# ------------------------------------------------------------------ one-shot SQNR against torchao intx
@pytest.mark.parametrize("granularity", [PerAxis(0), PerGroup(32)])
def test_one_shot_4bit_sqnr_at_least_torchaos_intx_on_a_random_layer(granularity):
    torch.manual_seed(0)
    layer, x = nn.Linear(512, 256), torch.randn(64, 512)
    ref = layer(x).detach()
    ours, theirs = copy.deepcopy(layer), copy.deepcopy(layer)
    quantize_(ours, QSAM2Config(weight_dtype=torch.int4, granularity=granularity))
    quantize_(theirs, IntxWeightOnlyConfig(torch.int4, granularity=granularity))
    sqnr_ours, sqnr_theirs = compute_error(ref, ours(x)), compute_error(ref, theirs(x))
    assert sqnr_ours >= sqnr_theirs, (float(sqnr_ours), float(sqnr_theirs))


# ------------------------------------------------------------------ the packed tensor under torchao's checks
def _packed(bits=2, group_size=None, shape=(64, 64), seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(shape[1], shape[0])
    quantize_(layer, qsam2_config(bits=bits, group_size=group_size))
    return layer


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_from_hp_is_what_quantize_gives(bits):
    layer = nn.Linear(64, 16)
    w = layer.weight.detach().clone()
    t = QSAM2PackedTensor.from_hp(w, getattr(torch, f"int{bits}"), PerGroup(32))
    quantize_(layer, qsam2_config(bits=bits, group_size=32))
    for name in ("packed", "center", "step"):
        assert torch.equal(getattr(t, name), getattr(layer.weight, name))
    with pytest.raises(ValueError, match="granularity"):
        QSAM2PackedTensor.from_hp(w, torch.int2, PerRow())


def test_vllm_style_narrow_and_copy_load_shards_into_the_parameter_in_place():
    target, source = _packed(seed=0), _packed(seed=1)
    assert not torch.equal(target.weight.packed, source.weight.packed)
    for rank in (0, 1):
        shard = target.weight.data.narrow(0, rank * 32, 32)
        shard.copy_(source.weight.narrow(0, rank * 32, 32))
    assert torch.equal(target.weight.dequantize(), source.weight.dequantize())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, 16])
def test_slices_chunks_cat_and_index_agree_with_the_dequantized_weight(bits, group_size):
    w = _packed(bits, group_size).weight
    dense = w.dequantize()
    assert torch.equal(w.narrow(1, 16, 32).dequantize(), dense[:, 16:48])
    assert torch.equal(w[8:24].dequantize(), dense[8:24])
    rows = torch.tensor([5, 0, 63, 5])
    assert torch.equal(w[rows].dequantize(), dense[rows])
    assert torch.equal(torch.cat(w.chunk(4, dim=0)).dequantize(), dense)
    if group_size is not None:  # along the inputs, shards with their own grids stitch back together
        assert torch.equal(torch.cat(w.chunk(2, dim=1), dim=1).dequantize(), dense)
    with pytest.raises(NotImplementedError, match="select rows"):
        w[0]
    if bits != 8:
        with pytest.raises(NotImplementedError, match="multiples"):
            w.narrow(1, 1, 16)


def test_view_keeps_rows_and_to_changes_the_output_dtype():
    conv = nn.Conv2d(32, 8, 1)
    quantize_(conv, qsam2_config(bits=4), filter_fn=lambda m, fqn: True)
    w = conv.weight
    flat = w.view(8, 32)
    assert flat.shape == (8, 32) and torch.equal(flat.dequantize(), w.dequantize().reshape(8, 32))
    with pytest.raises(NotImplementedError, match="keeps its output rows"):
        w.view(16, 16)
    half = w.to(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half.dequantize(), w.dequantize().to(torch.bfloat16))


def test_deepcopy_and_load_state_dict_assign_reproduce_the_model():
    layer = _packed(bits=3, group_size=16)
    x = torch.randn(4, 64)
    twin = copy.deepcopy(layer)
    assert twin.weight.packed.data_ptr() != layer.weight.packed.data_ptr()
    fresh = nn.Linear(64, 64)
    fresh.load_state_dict(layer.state_dict(), assign=True)
    assert isinstance(fresh.weight, QSAM2PackedTensor)
    assert torch.equal(twin(x), layer(x)) and torch.equal(fresh(x), layer(x))


def test_safetensors_round_trip_of_mixed_tensors_leaves_torchaos_allow_lists_alone(tmp_path):
    from torchao.prototype.safetensors import safetensors_utils as utils

    from qsam2_ext import read_quantized, save_quantized

    allowed, classes = list(utils.ALLOWED_TENSORS_SUBCLASSES), dict(utils.ALLOWED_CLASSES)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 16))
    quantize_(net, FqnToConfig({"0": qsam2_config(bits=2, act_bits=8),
                                "1": QSAM2Config(weight_dtype=torch.int4, method="pact",
                                                 packing_format="unpacked_to_int8")}), filter_fn=None)
    path = save_quantized(net, tmp_path / "q.safetensors")
    sd = read_quantized(path)
    assert isinstance(sd["0.weight"], QSAM2PackedTensor) and isinstance(sd["1.weight"], IntxUnpackedToInt8Tensor)
    fresh = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 16))
    fresh.load_state_dict(sd, assign=True)
    x = torch.randn(3, 32)
    assert torch.equal(fresh(x), net(x))
    assert utils.ALLOWED_TENSORS_SUBCLASSES == allowed and utils.ALLOWED_CLASSES == classes


def test_safetensors_entries_are_validated(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from qsam2_ext import read_quantized, save_quantized

    path = save_quantized(_packed(), tmp_path / "q.safetensors")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    entry = json.loads(metadata["model.weight"])
    entry["_data"]["bits"] = 5
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), {**metadata, "model.weight": json.dumps(entry)})
    with pytest.raises(ValueError, match=r"bad\.safetensors: packed tensor 'model\.weight': bits 5"):
        read_quantized(tmp_path / "bad.safetensors")


def test_export_records_a_quant_op_for_each_weight_format():
    x = torch.randn(2, 32)
    packed = nn.Linear(32, 16)
    intx = copy.deepcopy(packed)
    quantize_(packed, qsam2_config(bits=2))
    quantize_(intx, QSAM2Config(weight_dtype=torch.int4, method="pact", packing_format="unpacked_to_int8"))
    for module, op in [(packed, "qsam2.dequantize_packed"), (intx, "torchao.dequantize_affine")]:
        exported = torch.export.export(module, (x,))
        assert op in str(exported.graph)
        assert torch.equal(exported.module()(x), module(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_half_precision_dequantization_equals_eager(dtype):
    torch.manual_seed(0)
    w = QSAM2PackedTensor.from_hp(torch.randn(32, 128, dtype=dtype), torch.int4, PerGroup(32))
    assert w.step.dtype == dtype  # grids stored in half precision too
    assert torch.equal(torch.compile(lambda t: t.dequantize())(w), w.dequantize())


# ------------------------------------------------------------------ handlers quantize or raise
@pytest.mark.parametrize("config", [qsam2_config(bits=4), vrc_config(step="prepare")])
def test_weights_a_handler_cannot_quantize_raise_instead_of_staying_float(config):
    from torchao.quantization.transform_module import _QUANTIZE_CONFIG_HANDLER
    from torchao.utils import DummyModule

    handler = _QUANTIZE_CONFIG_HANDLER[type(config)]
    with pytest.raises(ValueError, match=r"not 'weight' of shape \(2, 8, 16\)|not a bare weight"):
        handler(DummyModule(torch.randn(2, 8, 16)), config)  # MoE tooling hands base configs 3-D expert stacks
    linear = nn.Linear(16, 8)
    linear.weight = nn.Parameter(torch.randn(2, 8, 16))  # vLLM stitches 3-D MoE weights into a Linear
    with pytest.raises(ValueError, match="3-D weight"):
        quantize_(linear, config)
    with pytest.raises(ValueError, match="not 'weight_scale'"):
        linear = nn.Linear(16, 8)
        linear.register_parameter("weight_scale", nn.Parameter(torch.ones(8)))
        handler(linear, config, parameter_name="weight_scale")


def test_bare_2d_weights_are_quantized_as_linear_weights_like_awq_applies_base_configs():
    from torchao.quantization.transform_module import _QUANTIZE_CONFIG_HANDLER
    from torchao.utils import DummyModule

    w = torch.randn(16, 64)
    bare = _QUANTIZE_CONFIG_HANDLER[QSAM2Config](DummyModule(w.clone()), qsam2_config(bits=4, group_size=32))
    assert torch.equal(bare.weight.packed, QSAM2PackedTensor.from_hp(w, torch.int4, PerGroup(32)).packed)


def test_patterns_sweep_past_modules_that_are_not_layers():
    model = nn.Sequential(nn.Embedding(10, 32), nn.LayerNorm(32), nn.Linear(32, 8))
    quantize_(model, FqnToConfig({r"re:.*": qsam2_config(bits=2)}), filter_fn=None)
    assert isinstance(model[2].weight, QSAM2PackedTensor)
    assert type(model[0].weight) is nn.Parameter and type(model[1].weight) is nn.Parameter


def test_vrc_convert_applies_a_base_config_like_torchaos_calibration_flows():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16))
    reference = copy.deepcopy(net)
    batches = [torch.randn(8, 32) for _ in range(3)]
    with VRCCalibration.for_model(reference) as calibration:
        for x in batches:
            reference(x)
    calibration.apply()
    quantize_(reference, qsam2_config(bits=4))
    quantize_(net, vrc_config(step="prepare"))
    for x in batches:
        net(x)
    quantize_(net, vrc_config(step="convert", base_config=qsam2_config(bits=4)))
    for ours, theirs in zip((net[0], net[2]), (reference[0], reference[2])):
        assert torch.equal(ours.weight.codes(), theirs.weight.codes())
        assert torch.equal(ours.weight.step, theirs.weight.step)
    intx = nn.Sequential(nn.Linear(32, 16))
    quantize_(intx, vrc_config(step="prepare"))
    intx(torch.randn(8, 32))
    quantize_(intx, vrc_config(step="convert", base_config=IntxWeightOnlyConfig(torch.int4)))
    assert isinstance(intx[0].weight, IntxUnpackedToInt8Tensor)


# ------------------------------------------------------------------ layering
def test_the_adapter_loads_only_the_core_and_torchao():
    """What importing the adapter adds to what ``import qsam2_ext`` loads (the core, the project's error types and
    Hydra's registration of the packaged configs: no model code, no sam2)."""
    code = ("import json, sys; mine = lambda: {m for m in sys.modules if m.split('.')[0] in ('qsam2_ext', 'sam2', "
            "'hydra')}; import qsam2_ext; before = mine(); import qsam2_ext.integrations.torchao; "
            "print(json.dumps([sorted(before), sorted(mine() - before)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    before, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [m for m in before if m.split(".")[0] == "sam2" or m.startswith("qsam2_ext.sam2")], before
    allowed = ("qsam2_ext.core", "qsam2_ext.integrations.torchao", "qsam2_ext.kernels")  # kernels: torch only
    strays = [m for m in loaded if m != "qsam2_ext.integrations"
              and not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert not strays, strays
    assert "qsam2_ext.integrations.torchao.qat" in loaded  # the handlers did load


def test_the_adapters_modules_import_each_other_without_cycles():
    folder = ROOT / "integrations" / "torchao"
    graph = {}
    for path in folder.glob("*.py"):
        names = set()
        for node in ast.parse(path.read_text()).body:  # module level only: function-level imports are lazy
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = names & {p.stem for p in folder.glob("*.py")}

    def visit(node, stack):
        assert node not in stack, " -> ".join(stack + [node])
        for nxt in graph[node]:
            visit(nxt, stack + [node])

    for node in graph:
        visit(node, [])
