"""scripts/upstream.py: the torchao patch is generated from the project's files and applies to pytorch/ao v0.18.0
(a checkout named by $QSAM2_AO_TREE; skipped without one); the dispatcher names a
missing target in one line."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TREE = pathlib.Path(os.environ.get("QSAM2_AO_TREE", "no-ao-checkout"))


def _run(*args, **kwargs):
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "upstream.py"), *args], capture_output=True,
                          text=True, env=env, **kwargs)


@pytest.mark.skipif(not (TREE / "ruff.toml").is_file() or not (TREE / ".git").exists(),
                    reason="no pytorch/ao v0.18.0 checkout (set QSAM2_AO_TREE)")
def test_torchao_patch_applies_to_the_v0_18_tree(tmp_path):
    pytest.importorskip("ruff")
    out = tmp_path / "qsam2-torchao.patch"
    result = _run("torchao", "--out", str(out), "--ao", str(TREE))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "+++ b/torchao/prototype/qsam2/packed_tensor.py" in text and "+++ b/test/prototype/qsam2/" in text
    assert "def register_fake_quantizer" in text
    assert not [line for line in text.splitlines() if line.startswith(("+from qsam2_ext", "+import qsam2_ext"))]
    check = subprocess.run(["git", "apply", "--check", str(out)], cwd=TREE, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_missing_target_module_is_one_line(tmp_path, monkeypatch):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "upstream.py").write_text((ROOT / "scripts" / "upstream.py").read_text())
    result = subprocess.run([sys.executable, str(scripts / "upstream.py"), "nncf", "--out", str(tmp_path / "p")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "upstream_nncf.py is missing" in result.stderr
