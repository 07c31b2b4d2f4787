"""Q-SAM2 layers in OpenVINO IR: integer weight constants in NNCF's decompression pattern, FakeQuantize inputs
that OpenVINO's CPU plugin runs as u8 x i8, and outputs equal to the baked torch model's (read back from the file).
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

nncf = pytest.importorskip("nncf")
ov = pytest.importorskip("openvino")

from qsam2_ext.core import LayerQuant, observing  # noqa: E402
from qsam2_ext.integrations import nncf as qn  # noqa: E402
from qsam2_ext.integrations.nncf.export import float_ir, layer_specs  # noqa: E402
from qsam2_ext.integrations.nncf.openvino_lowering import _pack, storage_type  # noqa: E402

LAYERS = ("fc1", "fc2", "conv")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.conv = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        y = self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        return {"out": [self.conv(y.permute(0, 3, 1, 2))]}


def _data(n=3):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 8, 8, 32, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def nncf_model():
    torch.manual_seed(0)
    return nncf.quantize(Net(), nncf.Dataset(_data()), subset_size=3)


def _baked(nncf_model, bits, act_bits, group_size=None):
    model = copy.deepcopy(nncf_model)
    cfg = LayerQuant(bits=bits, act_bits=act_bits, group_size=group_size)
    qn.attach_qsam2(model, _data(1)[0], {n: cfg for n in LAYERS}, keep_nncf=False)
    with observing(model), torch.no_grad():
        for x in _data():
            model(x)
    qn.bake(model)
    return model


def _weight_sources(ov_model):
    """For every MatMul / Convolution whose weight input is computed from constants only: the element type of the
    largest of those constants (the weights themselves; scales and zero points are per channel)."""
    found = {}
    for op in ov_model.get_ops():
        if op.get_type_name() not in ("MatMul", "Convolution"):
            continue
        constants, stack = [], [op.input(1).get_source_output().get_node()]
        while stack:
            node = stack.pop()
            if node.get_type_name() == "Parameter":
                constants = []
                break
            if node.get_type_name() == "Constant":
                constants.append((int(np.prod(node.get_output_shape(0))), node.get_element_type().get_type_name()))
            else:
                stack += [i.get_source_output().get_node() for i in node.inputs()]
        if constants:
            found[op.get_friendly_name()] = max(constants)[1]
    return found


def test_sub_byte_packing_matches_openvino():
    """Our packing, read back through OpenVINO's own i4/u2 element access."""
    rng = np.random.default_rng(0)
    for bits, etype in ((4, ov.Type.i4), (2, ov.Type.u2)):
        codes = rng.integers(-8, 8, 24) if bits == 4 else rng.integers(0, 4, 24)
        tensor = ov.Tensor(etype, [24])
        tensor.data.view(np.uint8).reshape(-1)[:] = _pack(codes, bits)
        const = ov.opset13.constant(tensor, shared_memory=False)
        back = ov.opset13.convert(const, ov.Type.i32)
        model = ov.Model([back], [])
        got = ov.Core().compile_model(model, "CPU")({})[0]
        np.testing.assert_array_equal(got, codes)
    assert storage_type(8)[0] == ov.Type.i8 and storage_type(3)[0] == ov.Type.i4 and storage_type(2) == (ov.Type.u2, 2)


@pytest.mark.parametrize("bits,act_bits,group_size,etype", [(4, 8, None, "i4"), (2, 8, None, "u2"),
                                                           (8, 8, None, "i8"), (3, None, 16, "i4")])
def test_ir_has_integer_weights_and_matches_torch(nncf_model, tmp_path, bits, act_bits, group_size, etype):
    model = _baked(nncf_model, bits, act_bits, group_size)
    x = _data(1)[0]
    path = str(tmp_path / "m.xml")
    ir, report = qn.export_openvino(model, x, path, compress_to_fp16=False)
    assert report["layers"] == 3 and report["ops_rewritten"] == 3
    assert report["hooks_ran"] == {"QSAM2WeightDecompressor": 3, **({"QSAM2FakeQuantize": 3} if act_bits else {})}
    sources = _weight_sources(ir)
    # the three layers; the offset term's helpers (a ones kernel or offset matrix) are f32 and small
    layers = {n: t for n, t in sources.items() if "offset" not in n and "aten::" in n}
    assert sorted(layers.values()) == [etype] * 3, sources
    assert report["fake_quantize_ops"] == (3 if act_bits else 0)
    # outputs of the file read back against the baked torch model. Weight-only: exact up to float rounding. With
    # quantized inputs a value within rounding of a grid boundary can land on the other level in one layer and
    # move the next layer's inputs: three layers deep that stays far below the quantization noise.
    compiled = ov.Core().compile_model(ov.Core().read_model(path), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
    with torch.no_grad():
        for batch in _data(2):
            expected = model(batch)["out"][0]
            got = torch.from_numpy(compiled(batch.numpy())[0])
            sqnr = 10 * torch.log10(expected.pow(2).sum() / (got - expected).pow(2).sum())
            assert float(sqnr) > (30 if act_bits else 100), float(sqnr)


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 16)

    def forward(self, x):
        return self.fc(x)


def _one(bits, act_bits, shift=0.0):
    data = [x + shift for x in _data(3)]
    model = nncf.quantize(One(), nncf.Dataset(data), subset_size=3)
    qn.attach_qsam2(model, data[0], {"fc": LayerQuant(bits=bits, act_bits=act_bits)},
                    keep_nncf=False)
    with observing(model), torch.no_grad():
        for x in data:
            model(x)
    qn.bake(model)
    return model, data


@pytest.mark.parametrize("act_bits", [8, 4])
def test_one_quantized_layer_is_exact(tmp_path, act_bits):
    """FakeQuantize + integer weights + offset term of one layer reproduce the torch layer to float rounding."""
    model, data = _one(4, act_bits)
    _, report = qn.export_openvino(model, data[0], str(tmp_path / "m.xml"), compress_to_fp16=False, offset="exact")
    assert report["min_sqnr_db_vs_torch"] > 100 and report["offset_terms"] == 1, report


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_folded_weights_are_the_grid_on_a_symmetric_int8_grid(tmp_path, bits):
    """offset="fold": the weights OpenVINO computes from the file (constant-folded on the CPU plugin) are integers
    times one scale per output channel, within [-127, 127], and at most half of that scale from the torch
    layer's grid values; the file still holds the narrow codes, the layer has no offset term and runs u8."""
    model, data = _one(bits, 8)
    path = str(tmp_path / "m.xml")
    ir, report = qn.export_openvino(model, data[0], path, compress_to_fp16=False)
    assert report["offset"] == "fold" and report["offset_terms"] == 0
    assert _weight_sources(ir) == {"__module.model.fc/aten::linear/MatMul": storage_type(bits)[0].get_type_name()}
    ops = {op.get_friendly_name(): op for op in ir.get_ops()}
    weights = ov.Core().compile_model(ov.Model([ops["fc.weight/fq_weights_1"].output(0)], []), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})({})[0]
    scale = ops["fc.weight/scale"].get_data().reshape(-1, 1)
    expected = layer_specs(model, data[0])["fc.weight"][1].numpy()  # the torch layer's weight values
    n = weights / scale
    np.testing.assert_allclose(n, np.round(n), atol=1e-3)
    assert np.abs(np.round(n)).max() <= 127
    # the scale is the row's largest grid value over 126.5: the error bound is half of it
    np.testing.assert_allclose(scale[:, 0], np.abs(expected).max(1) / 126.5, rtol=1e-5)
    assert (np.abs(weights - expected) <= scale / 2 * (1 + 1e-4)).all()
    assert qn.runtime_precisions(ov.Core().compile_model(path, "CPU"))["FullyConnected"] == {"u8": 1}


@pytest.mark.parametrize("bits", [4, 8])
def test_fold_bias_correction_keeps_the_mean_output_of_the_grid(tmp_path, bits):
    """With calibration batches the folded layer's bias absorbs the fold's weight change times the mean quantized
    input: over those batches the IR's mean output is the torch layer's (the exact grid) as closely as the exact
    offset term gets it, which the fold alone misses; the layer still runs u8 with no extra op."""
    model, data = _one(bits, 8, shift=torch.linspace(-1, 2, 32))  # a different non-zero mean per input channel
    with torch.no_grad():
        expected = torch.cat([model(x) for x in data]).double().reshape(-1, 16).mean(0).numpy()
    config = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
    gaps, adds = {}, {}
    for case, options in {"fold": {}, "corrected": {"calibration": data}, "exact": {"offset": "exact"}}.items():
        path = str(tmp_path / f"{case}.xml")
        ir, report = qn.export_openvino(model, data[0], path, compress_to_fp16=False, **options)
        assert report["bias_corrected"] == (case == "corrected")
        compiled = ov.Core().compile_model(path, "CPU", config)
        got = np.concatenate([compiled(x.numpy())[0] for x in data]).astype(np.float64).reshape(-1, 16).mean(0)
        gaps[case] = np.abs(got - expected).max()
        adds[case] = [op.get_type_name() for op in ir.get_ops()].count("Add")
        if case != "exact":
            assert report["offset_terms"] == 0
            assert qn.runtime_precisions(ov.Core().compile_model(path, "CPU"))["FullyConnected"] == {"u8": 1}
    assert adds["corrected"] == adds["fold"]  # the correction joins the layer's own bias
    # the exact IR's own gap (float rounding against torch) is the floor
    assert gaps["corrected"] < 3 * gaps["exact"] + 1e-6 and gaps["fold"] > 5 * gaps["corrected"], gaps


def test_a8_layers_run_u8_by_i8_on_cpu(nncf_model, tmp_path):
    """Executed precisions of the compiled runtime graph: every quantized layer is an integer kernel."""
    model = _baked(nncf_model, 4, 8)
    x = _data(1)[0]
    _, report = qn.export_openvino(model, x, str(tmp_path / "m.xml"), compress_to_fp16=True)
    compiled = ov.Core().compile_model(str(tmp_path / "m.xml"), "CPU")
    precisions = qn.runtime_precisions(compiled)
    ints = sum(n for kind in precisions.values() for p, n in kind.items() if p in ("u8", "i8"))
    assert ints >= 3, precisions  # fc1, fc2 (FullyConnected) and the 1x1 conv
    layers = {n: t for n, t in _weight_sources(ov.Core().read_model(str(tmp_path / "m.xml"))).items()
              if "aten::" in n}
    assert report["constants"].get("i4", 0) == 3 and sorted(layers.values()) == ["i4"] * 3, layers


def test_weight_only_layers_use_compressed_kernels(nncf_model, tmp_path):
    model = _baked(nncf_model, 4, None)
    _, report = qn.export_openvino(model, _data(1)[0], str(tmp_path / "m.xml"), compress_to_fp16=False)
    precisions = report["runtime_precisions"]
    assert precisions.get("FullyConnectedCompressed") or any(
        p == "i4" for kind in precisions.values() for p in kind), precisions


@pytest.mark.slow
def test_readme_flow_exports_a_sam2_encoder_and_the_predictor_runs_it(tmp_path):
    """quantize_with_recipe (its defaults) -> bake -> save / restore -> export_openvino -> OpenVINOImageEncoder in
    SAM2ImagePredictor, on a tiny random-init SAM2 (64²)."""
    from helpers import tiny_model

    from qsam2_ext.sam2.models import image_predictor

    model = tiny_model(64)
    batches = [torch.randn(1, 3, 64, 64) for _ in range(2)]
    q = qn.quantize_with_recipe(model, "sam2.1_hiera_t_w4a8", batches, outside="float")
    qn.bake(q.image_encoder)
    ckpt = qn.save(q.image_encoder)
    enc = qn.restore(tiny_model(64).image_encoder, ckpt)
    path = str(tmp_path / "encoder.xml")
    _, report = qn.export_openvino(enc, batches[0], path, compress_to_fp16=False)
    assert report["weights"] == {"4-bit": report["layers"]} and report["quantized_inputs"] == report["layers"]
    assert report["constants"].get("i4", 0) >= report["layers"] and report["min_sqnr_db_vs_torch"] > 20
    assert report["hooks_ran"]["QSAM2WeightDecompressor"] == report["layers"]
    # the IR as the predictor's image encoder: the same masks as the torch encoder it was exported from
    model.image_encoder = enc
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    box = np.array([8, 8, 40, 40])
    torch_masks = image_predictor(model)
    torch_masks.set_image(image)
    expected, _, _ = torch_masks.predict(box=box, multimask_output=False, return_logits=True)
    model.image_encoder = qn.OpenVINOImageEncoder.compile(path, enc, batches[0], {"INFERENCE_PRECISION_HINT": "f32"})
    ov_predictor = image_predictor(model)
    ov_predictor.set_image(image)
    got, _, _ = ov_predictor.predict(box=box, multimask_output=False, return_logits=True)
    agree = ((got > 0) == (expected > 0)).mean()
    assert agree > 0.98, agree


def test_dynamic_shapes_on_request(tmp_path):
    """``dynamic_shapes=True``: the image batch's N, H, W are free in the IR, which then runs other sizes like the
    torch model; the default is the example's static shape."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    example = torch.randn(1, 3, 16, 16)
    static = float_ir(model, example, str(tmp_path / "s.xml"), compress_to_fp16=False)
    assert static.inputs[0].get_partial_shape().is_static
    ir = float_ir(model, example, str(tmp_path / "d.xml"), compress_to_fp16=False, dynamic_shapes=True)
    assert str(ir.inputs[0].get_partial_shape()) == "[?,3,?,?]"
    compiled = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for shape in ((2, 3, 24, 20), (1, 3, 16, 16)):
        x = torch.randn(shape)
        with torch.no_grad():
            np.testing.assert_allclose(compiled(x.numpy())[0], model(x).numpy(), atol=1e-4)
