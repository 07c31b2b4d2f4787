"""Output folders never mix runs, refused jobs create nothing, runs that cannot do what was asked say so with a
nonzero exit, and non-finite inputs are never answered with a number."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, write_sa1b

from qsam2_ext import NonFiniteError, OutputFolderError, cli
from qsam2_ext.core import VRCCalibration
from qsam2_ext.outputs import MANIFEST, check_output_folder, claim_output_folder

TINY_MODEL = ["--model", "sam2.1_hiera_t", "--random-weights", "--image-size", "64",
              *[f"--override={o}" for o in TINY]]


def test_check_creates_nothing_and_claim_records_what_it_will_write(tmp_path):
    out = tmp_path / "a" / "b"
    check_output_folder(str(out))
    assert not (tmp_path / "a").exists()
    claim_output_folder(str(out), ["model.safetensors", "report.md"])
    assert json.loads((out / MANIFEST).read_text()) == {"files": ["model.safetensors", "report.md"]}
    (out / "report.md").write_text("old")
    with pytest.raises(OutputFolderError, match="not empty"):
        check_output_folder(str(out))
    claim_output_folder(str(out), ["other.pt"], force=True)  # an earlier run's files go, and only those
    assert sorted(os.listdir(out)) == [MANIFEST]
    (out / "mine.txt").write_text("user data")
    with pytest.raises(OutputFolderError, match="did not write .*mine.txt"):
        claim_output_folder(str(out), ["x.pt"], force=True)
    assert (out / "mine.txt").read_text() == "user data"


def test_a_manifest_never_removes_anything_outside_its_folder(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "keep.txt"
    out.mkdir()
    outside.write_text("keep")
    (out / MANIFEST).write_text(json.dumps({"files": ["../keep.txt", str(outside), "..", "."]}))
    claim_output_folder(str(out), ["x"], force=True)  # names that are not plain are ignored, never followed
    assert outside.read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["keep.txt", "out"]


def test_quantize_force_replaces_a_stale_report_and_quiet_prints_nothing_else(tmp_path):
    out = tmp_path / "out"
    claim_output_folder(str(out), ["masks.png", "report.md"])
    (out / "masks.png").write_bytes(b"stale figure of an earlier run")
    args = [sys.executable, "-m", "qsam2_ext.cli", "quantize", "--out", str(out), "--steps", "0", "--no-eval",
            "--calib-images", "2", "--quiet"]
    refused = subprocess.run(args, capture_output=True, text=True)
    assert refused.returncode == 2 and "not empty" in refused.stderr and refused.stderr.count("\n") == 1
    done = subprocess.run(args + ["--force"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout.startswith("wrote ")  # no warning, log line or progress bar
    assert not (out / "masks.png").exists()  # --no-eval: no figure, and the stale one is gone
    assert (out / "qsam2_mini_w4a8.safetensors").is_file() and (out / "report.md").is_file()


def test_a_refused_quantize_job_creates_no_folder(tmp_path, capsys):
    out = tmp_path / "new"
    assert cli.main(["quantize", "--out", str(out), "--recipe", "qsam2_mini_w9a9", "--no-progress"]) == 2
    assert "unknown recipe" in capsys.readouterr().err and not out.exists()


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    write_sa1b(tmp_path / "data", n=2)
    args = ["train", "--format", "sa1b", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
            "--steps", "1", "--batch-size", "2", "--num-workers", "0", "--no-progress", "--resume", *TINY_MODEL]
    assert cli.main(args) == 2
    assert "no checkpoint.pt to resume from" in capsys.readouterr().err


def test_eval_with_every_sample_skipped_exits_nonzero(tmp_path, capsys):
    write_sa1b(tmp_path / "data", n=2)
    for name in os.listdir(tmp_path / "data"):
        if name.endswith(".jpg"):
            (tmp_path / "data" / name).write_bytes(b"not an image")
    code = cli.main(["eval", "--format", "sa1b", "--data", str(tmp_path / "data"), "--no-progress", *TINY_MODEL])
    err = capsys.readouterr().err
    assert code == 2 and "every one of the 2 samples was skipped" in err and "sa_0.jpg" in err


def test_eval_needs_weights_unless_asked_for_random_ones(tmp_path, capsys):
    write_sa1b(tmp_path / "data", n=1)
    args = ["eval", "--format", "sa1b", "--data", str(tmp_path / "data"), "--no-progress", "--model",
            "sam2.1_hiera_t"]
    assert cli.main(args) == 2
    assert "--random-weights" in capsys.readouterr().err


def test_eval_of_the_embedded_model_by_its_short_name(tmp_path, capsys):
    write_sa1b(tmp_path / "data", n=1, height=64, width=64)
    assert cli.main(["eval", "--model", "qsam2_mini", "--format", "sa1b", "--data", str(tmp_path / "data"),
                     "--prompts", "box", "--no-progress", "--quiet"]) == 0
    assert "mIoU (box)" in capsys.readouterr().out


def test_packaged_configs_resolve_after_import_from_any_folder(tmp_path):
    code = ("import qsam2_ext\nfrom sam2.build_sam import build_sam2\n"
            "m = build_sam2('configs/qsam2/qsam2_mini.yaml', qsam2_ext.sam2.models.default_checkpoint(), "
            "device='cpu')\nprint(type(m).__name__, m.image_size)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["SAM2Base", "256"], done.stderr[-2000:]


def _static_w4a8_weight():
    from qsam2_ext import QSAM2PackedTensor

    codes = torch.randint(-8, 8, (6, 16), dtype=torch.int8)
    return QSAM2PackedTensor.from_codes(codes, torch.zeros(6, 1), torch.full((6, 1), 0.1), 4, torch.float32,
                                        torch.float32, act_bits=8, act_grid=(torch.tensor(0.0), torch.tensor(0.05)))


@pytest.mark.parametrize("integer", [False, True])
def test_nan_and_inf_inputs_stay_non_finite_through_a_static_activation_grid(integer):
    from qsam2_ext import integer_matmul

    weight = _static_w4a8_weight()
    x = torch.randn(4, 16)
    x[1, 3], x[2, 0] = float("nan"), float("inf")
    with torch.no_grad(), integer_matmul(enabled=integer, force=integer):
        out = F.linear(x, weight)
        finite_rows = F.linear(x[[0, 3]], weight)
    assert out[[1, 2]].isnan().all() and out[[0, 3]].isfinite().all()
    assert torch.equal(out[[0, 3]], finite_rows)  # finite rows are computed exactly as before


def test_non_finite_calibration_data_names_the_layer():
    layer = torch.nn.Linear(4, 4)
    calib = VRCCalibration({"blk": layer})
    with pytest.raises(ValueError, match="'blk': non-finite calibration activations"), calib:
        layer(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))


def test_a_non_finite_loss_stops_training_with_the_project_error(tmp_path):
    from qsam2_ext.sam2 import build_model
    from qsam2_ext.sam2.data import open_dataset
    from qsam2_ext.train import TrainConfig, train

    write_sa1b(tmp_path / "data", n=2)
    model = build_model("sam2.1_hiera_t", image_size=64, overrides=TINY)
    with torch.no_grad():
        model.sam_mask_decoder.iou_prediction_head.layers[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="non-finite loss at step 0"):
        train(model, open_dataset("sa1b", str(tmp_path / "data")), TrainConfig(steps=1, batch_size=2, num_workers=0),
              str(tmp_path / "run"), progress=False)
