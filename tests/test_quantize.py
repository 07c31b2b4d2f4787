"""`qsam2 quantize` end to end on the real qsam2_mini config (a randomly initialised checkpoint written here), its
checks before anything is modified or written, `load_quantized(path)`, and `qsam2 recipe list|explain`."""

import json

import pytest
import torch
from torch import nn

import qsam2_ext
from qsam2_ext import QSAM2PackedTensor, cli
from qsam2_ext.recipes import load_recipe
from qsam2_ext.sam2 import build_model, image_predictor
from qsam2_ext.sam2.synthetic import write_image_split

MINI = "configs/qsam2/qsam2_mini.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "mini.pt"
    torch.save({"model": build_model(MINI).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    return write_image_split(str(tmp_path_factory.mktemp("eval") / "eval"), 3, seed=1000, start=7000)


def test_quantize_end_to_end(tmp_path, checkpoint, eval_data):
    out = tmp_path / "out"
    args = ["quantize", "--checkpoint", str(checkpoint), "--steps", "2", "--eval-data", eval_data,
            "--out", str(out), "--no-progress"]
    assert cli.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"point", "box"} == set(report["evaluation"]["quantized"]["results"])
    assert 0 <= report["evaluation"]["float"]["results"]["box"]["mIoU"] <= 1
    assert (out / "masks.png").stat().st_size > 0 and "| box |" in (out / "report.md").read_text()
    # which CPU path each kind of packed layer ran, as the report's table says
    kinds, paths = report["evaluation"]["cpu_path_kinds"], report["evaluation"]["cpu_paths"]
    assert sum(k["layers"] for k in kinds) == sum(paths.values()) > 0
    assert {k["path"] for k in kinds} == set(paths) and "CPU path per kind" in (out / "report.md").read_text()
    from PIL import Image

    width, height = Image.open(out / "masks.png").size  # 3 scenes, then the real photograph: 4 rows of 256² tiles
    assert (width, height) == (3 * 256, 18 + 4 * 256)
    # no temporary QAT folder or file left: only the list of what the run wrote (for --force)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".qsam2-outputs.json"]

    path = out / "qsam2_mini_w4a8.safetensors"
    model = qsam2_ext.load_quantized(path)  # the config comes from the file's metadata
    _check_layers(model, "qsam2_mini_w4a8")
    same = qsam2_ext.load_quantized(build_model(MINI), path)  # the original signature still works
    image = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(model.forward_image(image)["vision_features"], same.forward_image(image)["vision_features"])
    predictor = image_predictor(model)
    predictor.set_image((torch.rand(256, 256, 3) * 255).to(torch.uint8).numpy())
    masks, _, _ = predictor.predict(box=[40, 40, 160, 160], multimask_output=False)
    assert masks.shape == (1, 256, 256)
    assert type(qsam2_ext.load_quantized(path, video=True)).__name__ == "SAM2VideoPredictor"
    assert cli.main(["eval", "--format", "sa1b", "--data", eval_data, "--checkpoint", str(path),  # recognised
                     "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 0  # config and size from the file
    again = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert again == report["evaluation"]["quantized"]["results"]


def _check_layers(model, recipe, float_sd=None):
    """Packed layers exactly where the plan says; with ``float_sd`` (no QAT, which fine-tunes float layers too),
    float islands keep the checkpoint's weights."""
    modules = dict(model.named_modules())
    for p in load_recipe(recipe).resolve(build_model(MINI)):
        weight = modules[p.fqn].weight
        if p.skip:
            assert not isinstance(weight, QSAM2PackedTensor), p.fqn
            if float_sd is not None:
                assert torch.equal(weight, float_sd[p.fqn + ".weight"]), p.fqn
        else:
            assert isinstance(weight, QSAM2PackedTensor) and (weight.bits, weight.act_bits) == (p.bits, p.act_bits)


def test_post_training_quantization_without_evaluation(tmp_path, checkpoint):
    out = tmp_path / "out"
    assert cli.main(["quantize", "--checkpoint", str(checkpoint), "--steps", "0", "--no-eval", "--out", str(out),
                     "--recipe", "qsam2_mini_w2a8", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["evaluation"] is None and report["qat_steps"] == 0 and "qat" not in report["times_s"]
    model = qsam2_ext.load_quantized(out / "qsam2_mini_w2a8.safetensors")
    _check_layers(model, "qsam2_mini_w2a8", torch.load(checkpoint, weights_only=True)["model"])


def _fails(capsys, args, message):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path, checkpoint, capsys, monkeypatch):
    out = tmp_path / "out"
    base = ["quantize", "--out", str(out), "--no-progress", "--no-eval"]
    monkeypatch.setattr("qsam2_ext.quantize.default_checkpoint", lambda: str(tmp_path / "qsam2_mini.pt"))
    _fails(capsys, base, f"the embedded default model's checkpoint is missing: {tmp_path / 'qsam2_mini.pt'}")
    _fails(capsys, base + ["--checkpoint", str(tmp_path / "absent.pt")], "absent.pt: no such file")
    torch.save(build_model(MINI).state_dict(), tmp_path / "bare.pt")
    _fails(capsys, base + ["--checkpoint", str(tmp_path / "bare.pt")], "not in the official SAM2 checkpoint format")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    _fails(capsys, base + ["--checkpoint", str(tmp_path / "text.pt")], "not a PyTorch checkpoint")
    _fails(capsys, base + ["--checkpoint", str(checkpoint), "--model", "sam2.1_hiera_t"],
           "does not match the model: ")
    _fails(capsys, base + ["--model", "sam2.1_hiera_t"], "--checkpoint is required for sam2.1_hiera_t")
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("extends: qsam2_mini_w4a8\nrules:\n  - match: image_encoder.trunk.blocks.0.attn.qvk\n    bits: 8\n")
    _fails(capsys, base + ["--checkpoint", str(checkpoint), "--recipe", str(recipe)], f"{recipe}:3: rules[0].match")
    assert not out.exists() or not any(out.iterdir())
    (tmp_path / "file").write_text("")
    _fails(capsys, base + ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "file" / "sub")],
           "cannot write there")


def test_checkpoint_of_another_config_lists_keys(tmp_path):
    mini = build_model(MINI)
    torch.save({"model": {**mini.state_dict(), "extra.weight": torch.zeros(1)}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"1 unexpected keys \['extra.weight'\]"):
        build_model(MINI, str(tmp_path / "x.pt"))
    sd = mini.state_dict()
    sd["obj_ptr_tpos_proj.weight"] = torch.zeros(3, 3)
    torch.save({"model": sd}, tmp_path / "y.pt")
    with pytest.raises(ValueError, match=r"1 shape mismatches \['obj_ptr_tpos_proj.weight \(3, 3\) != \(64, 128\)'\]"):
        build_model(MINI, str(tmp_path / "y.pt"))


def test_load_quantized_needs_a_config_or_a_model(tmp_path):
    net = nn.Sequential(nn.Linear(4, 4))
    path = qsam2_ext.save_quantized(net, tmp_path / "plain.safetensors")
    with pytest.raises(qsam2_ext.BadFileError, match="does not name its SAM2 model"):
        qsam2_ext.load_quantized(path)
    assert qsam2_ext.read_metadata(qsam2_ext.save_quantized(net, tmp_path / "m.pt", metadata={"model": "x"})) == {
        "model": "x"}


def test_recipe_list_and_explain(capsys):
    assert cli.main(["recipe", "list"]) == 0
    listed = capsys.readouterr().out
    assert "sam2.1_hiera_b+_w2a4" in listed and "qsam2_mini_w4a8" in listed
    assert cli.main(["recipe", "explain", "sam2.1_hiera_t_w3a8"]) == 0
    table = capsys.readouterr().out
    assert "image_encoder.trunk.blocks.11.mlp.layers.1" in table and "lsc     3  8" in table
    assert cli.main(["recipe", "explain", "sam2.1_hiera_t_w3a8", "--model", MINI]) == 0
    assert "blocks.11" not in capsys.readouterr().out
