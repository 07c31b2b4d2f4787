"""``scripts/train_default_model.py --recipe outliers``: fine-tunes the given float checkpoint with the recipe's
settings (recorded in the output JSON), and refuses a bad ``--init`` in one line before writing anything."""

import json
import os
import subprocess
import sys

import pytest
import torch

from qsam2_ext.sam2.models import default_checkpoint
from qsam2_ext.train.fine_tune import FINE_TUNE_RECIPES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_default_model.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TINY = ["--train-images", "4", "--train-clips", "2", "--eval-images", "2", "--eval-clips", "1", "--image-steps", "2",
        "--video-steps", "1", "--batch-size", "2", "--clip-batch-size", "1", "--clip-length", "2", "--workers", "1"]


def _run(*args, cwd):
    return subprocess.run([sys.executable, SCRIPT, *args], check=False, capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=600)


@pytest.mark.slow
def test_outliers_recipe_fine_tunes_the_init_checkpoint_with_its_settings(tmp_path):
    out = tmp_path / "run"
    done = _run("--recipe", "outliers", "--out", str(out), *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out / "qsam2_mini.json") as f:
        report = json.load(f)
    recipe = FINE_TUNE_RECIPES["outliers"]
    assert report["recipe"] == "outliers" and report["fine_tune"] == recipe
    assert report["init"] == default_checkpoint()
    image, video = report["stages"]["image"]["config"], report["stages"]["video"]["config"]
    for name, value in recipe.items():
        assert image[name] == value, name
    assert (image["weight_decay"], image["grad_clip"]) == (0.0, 0.0)
    assert video["lr"] == pytest.approx(recipe["lr"] / 3) and video["weight_decay"] == 0.0
    # it started from the init checkpoint (not from random initialisation) and then moved
    init = torch.load(default_checkpoint(), weights_only=True)["model"]
    tuned = torch.load(out / "qsam2_mini.pt", weights_only=True)["model"]
    key = "image_encoder.trunk.blocks.0.attn.qkv.weight"
    delta = (tuned[key] - init[key]).abs()
    # a bias-corrected Adam step moves a weight by lr·|m̂|/√v̂: exactly lr at the first step, at most ~1.0·lr at the
    # second; warm-up scales step k by (k + 1) / warmup_steps; two image steps, one video step at lr / 3; margin 1.5
    warmup = recipe["warmup_steps"]
    bound = 1.5 * recipe["lr"] * ((1 + 2) / warmup + (1 / 3) / warmup)
    assert 0 < delta.max() <= bound
    assert 0 <= report["held_out"]["box_mIoU"] <= 1


def test_a_bad_init_is_refused_in_one_line_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "run"
    done = _run("--recipe", "outliers", "--init", str(bad), "--out", str(out), *TINY, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(f"{bad}: truncated or not a PyTorch checkpoint")
    assert not out.exists()
    done = _run("--init", default_checkpoint(), "--out", str(out), *TINY, cwd=tmp_path)
    assert done.returncode == 2 and "--init needs --recipe outliers" in done.stderr
    assert not out.exists()
