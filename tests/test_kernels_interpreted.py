"""The GPU kernels' logic on any machine: Triton's interpreter runs them on the CPU (see interpret_kernels.py)."""

import importlib.util
import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_kernels_match_references_in_the_triton_interpreter():
    script = os.path.join(os.path.dirname(__file__), "interpret_kernels.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "interpreted kernels match the references" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_code_ops_match_references_in_the_triton_interpreter():
    script = os.path.join(os.path.dirname(__file__), "interpret_code_ops.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "interpreted code ops match the references" in done.stdout
