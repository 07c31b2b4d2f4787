"""The README runs as written: every python and bash block, in a fresh folder, with the installed `qsam2` command.

The set-up block (`make run`, `make test`) is CI itself for `make test`; `make run` is run by the slow test below
(the main job, one to three minutes), and its command is checked here against the Makefile."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README, re.S)
SETUP = [code for lang, code in BLOCKS if lang == "bash" and code.lstrip().startswith("make ")]


def _env():
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # the venv's `qsam2`
    return env


@pytest.mark.parametrize("index", [i for i, (lang, code) in enumerate(BLOCKS) if code not in SETUP])
def test_readme_block_runs_as_written(tmp_path, index):
    lang, code = BLOCKS[index]
    command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-e", "-o", "pipefail", "-c", code]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"README block {index} ({lang}) failed:\n{code}\n{done.stderr[-3000:]}"


def test_readme_set_up_is_the_makefiles():
    assert len(SETUP) == 1 and [line.split("#")[0].split() for line in SETUP[0].strip().splitlines()] == [
        ["make", "run"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    assert "$(VENV)/bin/qsam2 quantize --out out/quantize" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "make test"


@pytest.mark.slow
def test_make_run_main_job(tmp_path):
    """What `make run` runs (the venv's qsam2, its output folder), here in a fresh folder."""
    done = subprocess.run(["qsam2", "quantize", "--out", "out/quantize", "--no-progress"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("qsam2_mini_w4a8.safetensors", "report.md", "report.json", "masks.png"):
        assert (tmp_path / "out" / "quantize" / name).is_file()
