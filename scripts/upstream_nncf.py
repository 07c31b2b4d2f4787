"""Build the NNCF upstream patch: Variance-Reduced Calibration as an NNCF algorithm, from the project's own files.

    python scripts/upstream_nncf.py --out vrc_nncf.patch
    cd nncf && git apply vrc_nncf.patch       # NNCF's develop branch

The patch adds only new files, in NNCF's layout, with NNCF's license header:

    src/nncf/quantization/algorithms/variance_reduced_calibration/{__init__,algorithm,backend,torch_backend}.py
    tests/cross_fw/test_templates/test_variance_reduced_calibration.py        (the backend-independent template)
    tests/torch/function_hook/quantization/test_variance_reduced_calibration.py   (its torch instance)

They are ``integrations/nncf/vrc/{algorithm,backend,torch_backend}.py`` and ``tests/test_nncf_vrc{_template,}.py``
with the module paths rewritten and the project's module docstrings dropped; nothing else of the project goes
upstream (the SAM2 padding masks and ``VRCReport``s stay in ``integrations/nncf/vrc/calibrate.py``). The algorithm
uses NNCF's public extension points only: ``Algorithm``, ``TensorStatistic``, reducers/aggregators, backend
commands.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "nncf.quantization.algorithms.variance_reduced_calibration"
ALGORITHM_DIR = "src/nncf/quantization/algorithms/variance_reduced_calibration"
TEMPLATE = "tests/cross_fw/test_templates/test_variance_reduced_calibration.py"
TORCH_TEST = "tests/torch/function_hook/quantization/test_variance_reduced_calibration.py"

LICENSE_HEADER = """\
# Copyright (c) 2026 Intel Corporation
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#      http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""

# (project file, NNCF path)
FILES = [
    (None, f"{ALGORITHM_DIR}/__init__.py"),
    ("integrations/nncf/vrc/algorithm.py", f"{ALGORITHM_DIR}/algorithm.py"),
    ("integrations/nncf/vrc/backend.py", f"{ALGORITHM_DIR}/backend.py"),
    ("integrations/nncf/vrc/torch_backend.py", f"{ALGORITHM_DIR}/torch_backend.py"),
    ("tests/test_nncf_vrc_template.py", TEMPLATE),
    ("tests/test_nncf_vrc.py", TORCH_TEST),
]

# project spelling -> NNCF spelling, applied line by line
REWRITES = [
    ("qsam2_ext.integrations.nncf.vrc.", PACKAGE + "."),
    ("from test_nncf_vrc_template import", "from tests.cross_fw.test_templates.test_variance_reduced_calibration import"),
    ('nncf = pytest.importorskip("nncf")', "import nncf"),
    ("  # noqa: E402", ""),
]


def _drop_module_docstring(source: str, path: str) -> str:
    tree = ast.parse(source, filename=path)
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(getattr(tree.body[0], "value", None), ast.Constant):
        lines = source.splitlines(keepends=True)
        source = "".join(lines[tree.body[0].end_lineno:]).lstrip("\n")
    return source


def nncf_source(project_path: str | None) -> str:
    """The NNCF version of one project file (or of an empty package ``__init__``)."""
    if project_path is None:
        return LICENSE_HEADER
    with open(os.path.join(ROOT, project_path), encoding="utf-8") as f:
        source = _drop_module_docstring(f.read(), project_path)
    lines = []
    for line in source.splitlines():
        for old, new in REWRITES:
            line = line.replace(old, new)
        lines.append(line)
    body = "\n".join(lines).rstrip("\n") + "\n"
    leftover = [name for name in ("qsam2_ext", "test_nncf") if name in body]
    if leftover:
        raise ValueError(f"{project_path}: project names left after rewriting: {leftover}")
    return LICENSE_HEADER + "\n" + body


def new_file_diff(path: str, text: str) -> str:
    lines = text.splitlines()
    header = (f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
              f"@@ -0,0 +1,{len(lines)} @@\n")
    return header + "".join(f"+{line}\n" for line in lines)


def build_patch(out_path: str) -> None:
    """Write the NNCF patch (new files only, ``git apply``-able to NNCF's develop branch) to ``out_path``."""
    patch = "".join(new_file_diff(nncf_path, nncf_source(project_path)) for project_path, nncf_path in FILES)
    directory = os.path.dirname(os.path.abspath(out_path))
    tmp = os.path.join(directory, f".{os.path.basename(out_path)}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(patch)
    os.replace(tmp, out_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="patch file to write")
    args = parser.parse_args(argv)
    build_patch(args.out)
    print(f"wrote {args.out}: {len(FILES)} new files under {ALGORITHM_DIR} and NNCF's tests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
