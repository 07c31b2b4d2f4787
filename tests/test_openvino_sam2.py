"""SAM2 in OpenVINO (``tests/openvino_sam2_cases.py``), run in a child process.

After these cases had compiled SAM2's prompt encoder and mask decoder (dynamic prompt shapes) in the pytest process,
a later process creation in that same process (a DataLoader worker, ``subprocess.run``, a process pool) crashed it
with SIGSEGV and no Python traceback, in all 5 full-suite runs (2 random orders) after these cases were added
(OpenVINO 2026.4.1, torch 2.14.1; cause not found). In their own process the cases cannot take the rest of the
suite down.
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("nncf")
pytest.importorskip("openvino")


@pytest.mark.parametrize("marks", ["not slow", pytest.param("slow", marks=pytest.mark.slow)])
def test_openvino_sam2_cases_in_a_child_process(marks):
    cases = os.path.join(os.path.dirname(__file__), "openvino_sam2_cases.py")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", marks, "-p", "no:randomly",
                           "-p", "no:cacheprovider", cases], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
