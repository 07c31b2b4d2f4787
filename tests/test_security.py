"""Files are data, never code or paths: hostile quantized files, checkpoints and recipes, crafted as an attacker
would, are refused with the project's own one-line errors, and the command each payload carries never runs (a
marker file it would create never appears)."""

import json
import os
import pickle
import time

import pytest
import torch
from torch import nn

import qsam2_ext
from qsam2_ext import cli
from qsam2_ext.errors import BadFileError, QSAM2Error
from qsam2_ext.recipes import RecipeError, load_recipe

# standard-library callables that can create a file or run a command, as a Hydra `_target_` or a pickle reduce
RUNNERS = {
    "subprocess.run": lambda m: {"_target_": "subprocess.run", "args": ["touch", m]},
    "os.system": lambda m: {"_target_": "os.system", "command": f"touch {m}"},
    "pathlib.Path.touch": lambda m: {"_target_": "pathlib.Path.touch", "self": m},
    "builtins.open": lambda m: {"_target_": "builtins.open", "file": m, "mode": "w"},
    "shutil.copyfile": lambda m: {"_target_": "shutil.copyfile", "src": os.devnull, "dst": m},
}


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield str(path)
    assert not path.exists(), "a payload ran"


def _artifact(tmp_path, metadata, suffix=".safetensors"):
    """A real quantized file (a tiny packed Linear) whose qsam2_ext metadata is ``metadata`` (any JSON value)."""
    net = nn.Sequential(nn.Linear(8, 8))
    from torchao.quantization import quantize_

    quantize_(net, qsam2_ext.qsam2_config(bits=4))
    path = qsam2_ext.save_quantized(net, tmp_path / f"hostile{suffix}")
    if suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), "pt") as f:
            header = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        header["qsam2_ext"] = metadata if isinstance(metadata, str) else json.dumps(metadata)
        save_file(tensors, str(path), metadata=header)
    else:
        ckpt = torch.load(path, weights_only=True)
        ckpt["qsam2_ext"] = metadata if isinstance(metadata, str) else json.dumps(metadata)
        torch.save(ckpt, path)
    return path


def _hostile_config(tmp_path, marker, runner):
    """A SAM2-looking Hydra config that would run ``runner`` if composed and instantiated."""
    path = tmp_path / "evil.yaml"
    path.write_text(json.dumps({"model": RUNNERS[runner](marker)}))
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_metadata_never_reaches_hydra(tmp_path, marker, runner, suffix):
    evil = _hostile_config(tmp_path, marker, runner)
    payloads = [
        {"model": os.path.relpath(evil)},                                 # a path, relative
        {"model": str(evil)},                                             # absolute
        {"model": "../../../../" + str(evil).lstrip("/")},                # traversal
        {"model": "sam2.1_hiera_t", "overrides": [f"++model._target_={RUNNERS[runner](marker)['_target_']}"]},
        {"model": "sam2.1_hiera_t", "image_size": "${oc.env:HOME}"},      # an interpolation
        {"model": "${oc.env:HOME}"},
        {"model": RUNNERS[runner](marker)},                               # a _target_ object
        {"model": "sam2.1_hiera_t", "image_size": 10**9},                 # out of range
        {"model": "sam2.1_hiera_t", "recipe": "x" * 10_000},              # oversized
    ]
    for metadata in payloads:
        path = _artifact(tmp_path, metadata, suffix)
        with pytest.raises(BadFileError) as e:
            qsam2_ext.load_quantized(path)
        message = str(e.value)
        assert message.startswith(str(path)) and "\n" not in message, message


def test_pickle_payloads_in_pt_files_are_refused(tmp_path, marker):
    class Payload:
        def __reduce__(self):
            from pathlib import Path

            return Path.touch, (Path(marker),)

    for name, content in {"plain.pt": Payload(), "wrapped.pt": {"model": {"w": Payload()}}}.items():
        path = tmp_path / name
        with open(path, "wb") as f:
            pickle.dump(content, f)
        torch.save(content, tmp_path / ("torch_" + name))
        for p in (path, tmp_path / ("torch_" + name)):
            with pytest.raises(BadFileError, match=str(p)):
                qsam2_ext.read_quantized(p)
            with pytest.raises(BadFileError, match=str(p)):
                qsam2_ext.load_quantized(p)


def test_cli_refuses_hostile_files_in_one_line(tmp_path, marker, capsys):
    from qsam2_ext.sam2.synthetic import write_image_split

    data = write_image_split(str(tmp_path / "data"), 1, seed=1000, size=64)
    evil = _hostile_config(tmp_path, marker, "subprocess.run")
    path = _artifact(tmp_path, {"model": str(evil)})
    capsys.readouterr()  # what writing the file printed (torch's first-import notices) is not the CLI's
    assert cli.main(["eval", "--format", "sa1b", "--data", data, "--checkpoint", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("qsam2 eval: error: ") and str(path) in err and "model" in err


@pytest.mark.parametrize("content, problem", [
    (b"", "the file is empty"),
    (b"\x00" * 3, "truncated"),
    (b"\xff" * 64, "truncated"),
    (b"not a model at all, just text" * 4, "not a safetensors file"),
    ((10).to_bytes(8, "little") + b"{not json}", "not a readable safetensors file"),
])
def test_bad_safetensors_files_get_one_line(tmp_path, content, problem):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    for read in (qsam2_ext.read_metadata, qsam2_ext.read_quantized, qsam2_ext.load_quantized):
        with pytest.raises(BadFileError, match=problem) as e:
            read(path)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_truncated_and_empty_pt_files_get_one_line(tmp_path):
    good = qsam2_ext.save_quantized(nn.Sequential(nn.Linear(4, 4)), tmp_path / "good.pt")
    data = good.read_bytes()
    for name, content, problem in [("empty.pt", b"", "the file is empty"),
                                   ("cut.pt", data[: len(data) // 2], "truncated"),
                                   ("text.pt", b"hello", "truncated or not a PyTorch checkpoint")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(BadFileError, match=problem):
            qsam2_ext.read_quantized(path)
        with pytest.raises(BadFileError, match=problem):
            qsam2_ext.load_quantized(nn.Sequential(nn.Linear(4, 4)), path)


def test_a_folder_or_missing_file_is_named(tmp_path):
    with pytest.raises(BadFileError, match="not a regular file"):
        qsam2_ext.load_quantized(tmp_path)
    with pytest.raises(BadFileError, match="no such file"):
        qsam2_ext.load_quantized(tmp_path / "absent.safetensors")


# ---- recipes -------------------------------------------------------------------------------------------------------

def _recipe(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_bomb_is_refused_fast(tmp_path):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    path = _recipe(tmp_path, "\n".join(levels) + "\nmodel: qsam2_mini\n")
    start = time.perf_counter()
    with pytest.raises(RecipeError, match=rf"{path}:1: .*anchors and aliases"):
        load_recipe(str(path))
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("text, message", [
    ("model: ../../../../elsewhere/x.yaml\nrules: [{match: 're:.*'}]\n", "packaged models"),
    ("model: configs/sam2.1/../../evil.yaml\nrules: [{match: 're:.*'}]\n", "packaged models"),
    ("model: '${oc.env:HOME}'\nrules: [{match: 're:.*'}]\n", "packaged models"),
    ("extends: ../../../elsewhere/evil\n", "not a path"),
    ("extends: /etc/passwd\n", "not a path"),
    ("model: !!python/object/apply:os.system ['touch x']\n", "invalid YAML"),
    ("model: qsam2_mini\nrules: [{match: 're:(a+)+$'}]\n", "exponential"),
    ("model: qsam2_mini\nrules: [{match: 're:.*.*.*.*.*x'}]\n", "repetitions"),
    ("a:" + " [" * 40 + " ]" * 40 + "\n", "nested deeper"),
    ("model: qsam2_mini\ndescription: '" + "x" * 2000 + "'\nrules: [{match: 're:.*'}]\n", "description"),
])
def test_hostile_recipes_get_file_and_line(tmp_path, marker, text, message):
    path = _recipe(tmp_path, text)
    with pytest.raises(RecipeError, match=message) as e:
        load_recipe(str(path))
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_extends_takes_a_sibling_file_or_a_shipped_name(tmp_path):
    _recipe(tmp_path, "extends: qsam2_mini_w4a8\ndescription: base\n", "base.yaml")
    child = _recipe(tmp_path, "extends: base\ndescription: child\n")
    recipe = load_recipe(str(child))
    assert recipe.spec.description == "child" and recipe.spec.model == "qsam2_mini"


def test_oversized_recipe_is_refused_before_parsing(tmp_path):
    path = _recipe(tmp_path, "# " + "x" * (300 * 1024) + "\nmodel: qsam2_mini\n")
    with pytest.raises(RecipeError, match="at most 256 KiB"):
        load_recipe(str(path))


def test_every_project_error_is_a_value_error():
    assert issubclass(RecipeError, QSAM2Error) and issubclass(BadFileError, ValueError)
