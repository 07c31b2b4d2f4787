"""The OpenVINO tests (``tests/openvino_cases.py``: export and lowering; ``tests/openvino_sam2_cases.py``: SAM2 in
OpenVINO), each file run in a child pytest process.

After OpenVINO had compiled enough models in the pytest process, a later process creation in that same process (a
DataLoader worker, ``subprocess.run``, a process pool) crashed it with SIGSEGV and no Python traceback: first after the
SAM2 cases compiled the dynamic-shape prompt encoder and mask decoder (5 of 5 full-suite runs), then, once those ran
in a child, after two more export cases were added to the lowering tests (``test_train``'s DataLoader and ``subprocess``
tests, 4 of 4 runs). OpenVINO 2026.4.1, torch 2.14.1; a minimal script (40 small compiled models, then 20 forks)
does not crash, and the cause was not found. In their own processes the cases cannot take the rest of the suite
down; ``docs/openvino.md`` says what a user should do.
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("nncf")
pytest.importorskip("openvino")


@pytest.mark.parametrize("cases, marks", [
    ("openvino_cases.py", "not slow"),
    pytest.param("openvino_cases.py", "slow", marks=pytest.mark.slow),
    ("openvino_sam2_cases.py", "not slow"),
    pytest.param("openvino_sam2_cases.py", "slow", marks=pytest.mark.slow),
])
def test_openvino_cases_in_a_child_process(cases, marks):
    path = os.path.join(os.path.dirname(__file__), cases)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", marks, "-p", "no:randomly",
                           "-p", "no:cacheprovider", path], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
