"""The torchao target of ``scripts/upstream.py``: a patch for pytorch/ao at tag v0.18.0 that adds

* ``torchao/prototype/qsam2/``: this project's framework-free core (``qsam2_ext/core`` -> ``qsam2/core``), the packed
  format's kernels (``qsam2_ext/kernels`` -> ``qsam2/kernels``) and the torchao adapter
  (``integrations/torchao`` -> ``qsam2/``), imports rewritten, torchao's license header on top;
* ``test/prototype/qsam2/``: the adapter's tests (``tests/test_torchao_tensors.py``, ``tests/test_torchao_qat.py``)
  less the project-only ones, plus the registration API's own tests;
* the small, generic QAT registration API torchao 0.18 marks as TODO: ``register_fake_quantizer`` (used by
  ``FakeQuantizerBase.from_config``), ``register_fake_quantize_configs`` (used by ``_infer_fake_quantize_configs``)
  and ``FakeQuantizerBase.convert_kwargs`` (what ``QATConfig``'s convert hands the base config's handler; range
  learning's ``custom_scale`` / ``custom_zero_point`` move behind it);
* ``torchao.prototype.qsam2`` in ``ALLOWED_AO_MODULES`` (``config_from_dict``).

Edits to torchao's existing files are exact replacements of v0.18.0's text: a tree that differs fails loudly.
The generated files are fixed and checked with ruff under torchao's own ``ruff.toml``.
"""

from __future__ import annotations

import ast
import difflib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
AO_TAG = "v0.18.0"
DEFAULT_TREE = os.environ.get("QSAM2_AO_TREE")  # a pytorch/ao checkout at v0.18.0
HEADER = """# Copyright (c) Meta Platforms, Inc. and affiliates.
# All rights reserved.
#
# This source code is licensed under the BSD 3-Clause license found in the
# LICENSE file in the root directory of this source tree.
"""
PACKAGE = "torchao/prototype/qsam2"
TESTS = "test/prototype/qsam2"

# (project folder, destination folder, files left out): the project's checkpoint files (SAM2 layout, atomic
# writes) stay in the project; torchao's own safetensors support would need the packed tensor in its allow-list
PACKAGES = [("qsam2_ext/core", f"{PACKAGE}/core", {"files.py"}), ("qsam2_ext/kernels", f"{PACKAGE}/kernels", set()),
            ("integrations/torchao", PACKAGE, {"serialization.py"})]
# (project test, destination, tests left out: they check this project's own layout or training loop)
TEST_FILES = [
    ("tests/test_torchao_tensors.py", f"{TESTS}/test_qsam2_tensors.py",
     {"test_the_adapter_loads_only_the_core_and_torchao", "test_the_adapters_modules_import_each_other_without_cycles",
      "test_safetensors_round_trip_of_mixed_tensors_leaves_torchaos_allow_lists_alone",
      "test_safetensors_entries_are_validated"}),
    ("tests/test_torchao_qat.py", f"{TESTS}/test_qsam2_qat.py", {"test_lsc_alpha_trains_in_the_quantizer_parameter_group"}),
    ("scripts/upstream_torchao_tests/test_qat_registration.py", f"{TESTS}/test_qat_registration.py", set()),
]
IMPORTS = [  # project module -> torchao module, longest first
    ("qsam2_ext.integrations.torchao", "torchao.prototype.qsam2"),
    ("qsam2_ext.core", "torchao.prototype.qsam2.core"),
    ("qsam2_ext.kernels", "torchao.prototype.qsam2.kernels"),
]


def _rewrite(text: str, where: str) -> str:
    for old, new in IMPORTS:
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    text = re.sub(r"^(\s*)from qsam2_ext import kernels\b", r"\1from torchao.prototype.qsam2 import kernels", text,
                  flags=re.M)
    text = re.sub(r"^(\s*)from qsam2_ext import ", r"\1from torchao.prototype.qsam2 import ", text, flags=re.M)
    for node in ast.walk(ast.parse(text)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(n.split(".")[0] == "qsam2_ext" for n in names):
            raise ValueError(f"{where}: imports {names} have no place in torchao")
    return text


def _drop_functions(text: str, names: set, where: str) -> str:
    lines = text.splitlines(keepends=True)
    spans = []
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            spans.append((start, node.end_lineno))
    if len(spans) != len(names):
        raise ValueError(f"{where}: tests to leave out not found: {sorted(names)}")
    for start, end in sorted(spans, reverse=True):
        del lines[start:end]
    return "".join(lines)


def _adapter_init(text: str) -> str:
    """In torchao's tree the package is in ``ALLOWED_AO_MODULES`` itself: no set to add to at import."""
    text = text.replace("from torchao.core.config import ALLOWED_AO_MODULES\n\n", "")
    text = re.sub(r"\n# let torchao\.core\.config\.config_from_dict.*?\nALLOWED_AO_MODULES\.add\(__name__\)\n", "\n",
                  text, flags=re.S)
    serialization = re.search(r"from \.serialization import ([^\n]+)\n", text)
    if "ALLOWED_AO_MODULES" in text or serialization is None:
        raise ValueError("integrations/torchao/__init__.py: its imports are not what the generator expects")
    text = text.replace(serialization.group(0), "")
    for name in serialization.group(1).split(","):
        text = re.sub(rf'\s*"{name.strip()}",', "", text)
    return text


def new_files() -> dict[str, str]:
    """Destination path -> content of every file the patch adds (before ruff's fixes)."""
    files = {}
    for src, dst, leave_out in PACKAGES:
        for path in sorted((ROOT / src).glob("*.py")):
            if path.name in leave_out:
                continue
            text = path.read_text()
            if src == "integrations/torchao" and path.name == "__init__.py":
                text = _adapter_init(text)
            files[f"{dst}/{path.name}"] = HEADER + "\n" + _rewrite(text, str(path.relative_to(ROOT)))
    for src, dst, leave_out in TEST_FILES:
        text = (ROOT / src).read_text()
        if leave_out:
            text = _drop_functions(text, leave_out, src)
        files[dst] = HEADER + "\n" + _rewrite(text, src)
    files[f"{TESTS}/__init__.py"] = HEADER
    return files


# ---------------------------------------------------------------- edits of torchao's own files (exact v0.18.0 text)
_FROM_CONFIG_OLD = '''    @staticmethod
    def from_config(config: FakeQuantizeConfigBase) -> "FakeQuantizerBase":
        if isinstance(config, IntxFakeQuantizeConfig):'''
_FROM_CONFIG_NEW = '''    @staticmethod
    def from_config(config: FakeQuantizeConfigBase) -> "FakeQuantizerBase":
        fake_quantizer_type = _FAKE_QUANTIZER_TYPES.get(type(config))
        if fake_quantizer_type is not None:
            return fake_quantizer_type(config)
        if isinstance(config, IntxFakeQuantizeConfig):'''
_BASE_OLD = '''class FakeQuantizerBase(torch.nn.Module):
    """
    Generic module for applying fake quantization to a tensor, as specified in the config.
    """

    config: FakeQuantizeConfigBase
'''
_BASE_NEW = '''_FAKE_QUANTIZER_TYPES: Dict[Type[FakeQuantizeConfigBase], Type["FakeQuantizerBase"]] = {}


def register_fake_quantizer(config_type: Type[FakeQuantizeConfigBase]):
    """
    Register the `FakeQuantizerBase` subclass that `FakeQuantizerBase.from_config`
    builds for `config_type` (looked up by exact type), so that fake quantization
    schemes outside this file work with `QATConfig`. Use as a class decorator::

        @register_fake_quantizer(MyFakeQuantizeConfig)
        class MyFakeQuantizer(FakeQuantizerBase):
            def __init__(self, config: MyFakeQuantizeConfig): ...
    """

    def decorator(fake_quantizer_type):
        _FAKE_QUANTIZER_TYPES[config_type] = fake_quantizer_type
        return fake_quantizer_type

    return decorator


class FakeQuantizerBase(torch.nn.Module):
    """
    Generic module for applying fake quantization to a tensor, as specified in the config.
    """

    config: FakeQuantizeConfigBase

    def convert_kwargs(self, weight: torch.Tensor) -> Dict[str, Any]:
        """
        Keyword arguments `QATConfig`'s convert step passes to the base config's
        handler for the weight this quantizer fake-quantized, e.g. the
        `custom_scale` and `custom_zero_point` it learned. None by default.
        """
        return {}
'''
_INTX_OLD = '''        # For range learning only
        # TODO: make this configurable?
        self._scale_eps = 1e-9
        self._initialized = False
'''
_INTX_NEW = _INTX_OLD + '''
    def convert_kwargs(self, weight: torch.Tensor) -> Dict[str, Any]:
        if not self.config.range_learning:
            return {}
        return {"custom_scale": self.scale, "custom_zero_point": self.zero_point}
'''
_TYPING_OLD = "from typing import Optional\n\nimport torch\n"
_TYPING_NEW = "from typing import Any, Dict, Optional, Type\n\nimport torch\n"

_INFER_OLD = '''    # TODO: rewrite using registration API so we don't need to import here
    # avoid circular imports
    from torchao.prototype.mx_formats import ('''
_INFER_NEW = '''    infer = _FAKE_QUANTIZE_CONFIGS_FOR_BASE.get(type(base_config))
    if infer is not None:
        return infer(base_config)
    # TODO: move the cases below to `register_fake_quantize_configs`
    # avoid circular imports
    from torchao.prototype.mx_formats import ('''
_INFER_DEF_OLD = '''def _infer_fake_quantize_configs(
    base_config: AOBaseConfig,'''
_INFER_DEF_NEW = '''_FAKE_QUANTIZE_CONFIGS_FOR_BASE: Dict[
    type,
    Callable[
        [AOBaseConfig],
        Tuple[Optional[FakeQuantizeConfigBase], Optional[FakeQuantizeConfigBase]],
    ],
] = {}


def register_fake_quantize_configs(base_config_type: type):
    """
    Register how `QATConfig(base_config, step="prepare")` infers the
    `(activation_config, weight_config)` fake quantization configs for base
    configs of `base_config_type` (looked up by exact type). Use as a decorator
    on a function `base_config -> (activation_config, weight_config)`.
    """

    def decorator(infer):
        _FAKE_QUANTIZE_CONFIGS_FOR_BASE[base_config_type] = infer
        return infer

    return decorator


''' + _INFER_DEF_OLD

_CONVERT_OLD = '''        kwargs = {}
        has_custom_scale_and_zero_point = False
        if (
            hasattr(module, "weight_fake_quantizer")
            and isinstance(module.weight_fake_quantizer.config, IntxFakeQuantizeConfig)
            and module.weight_fake_quantizer.config.range_learning
        ):
            kwargs["custom_scale"] = module.weight_fake_quantizer.scale
            kwargs["custom_zero_point"] = module.weight_fake_quantizer.zero_point
            has_custom_scale_and_zero_point = True
'''
_CONVERT_NEW = '''        kwargs = {}
        weight_fake_quantizer = getattr(module, "weight_fake_quantizer", None)
        if isinstance(weight_fake_quantizer, FakeQuantizerBase):
            kwargs = weight_fake_quantizer.convert_kwargs(module.weight)
        has_custom_scale_and_zero_point = "custom_scale" in kwargs
'''
_INIT_OLD = '''from .fake_quantize_config import (
    FakeQuantizeConfig,
    FakeQuantizeConfigBase,
'''
_INIT_NEW = '''from .fake_quantize_config import (
    FakeQuantizeConfig,
    FakeQuantizeConfigBase,
    register_fake_quantize_configs,
'''
_INIT2_OLD = '''from .fake_quantizer import (
    FakeQuantizer,
    FakeQuantizerBase,
'''
_INIT2_NEW = '''from .fake_quantizer import (
    FakeQuantizer,
    FakeQuantizerBase,
    register_fake_quantizer,
'''
_INIT3_OLD = '''    "FakeQuantizedEmbedding",
    # Prototype
'''
_INIT3_NEW = '''    "FakeQuantizedEmbedding",
    "register_fake_quantize_configs",
    "register_fake_quantizer",
    # Prototype
'''
_ALLOWED_OLD = '''    "torchao.prototype.awq",
'''
_ALLOWED_NEW = '''    "torchao.prototype.awq",
    "torchao.prototype.qsam2",
'''

EDITS = {
    "torchao/quantization/qat/fake_quantizer.py": [(_TYPING_OLD, _TYPING_NEW), (_BASE_OLD, _BASE_NEW),
                                                   (_FROM_CONFIG_OLD, _FROM_CONFIG_NEW), (_INTX_OLD, _INTX_NEW)],
    "torchao/quantization/qat/fake_quantize_config.py": [(_INFER_DEF_OLD, _INFER_DEF_NEW), (_INFER_OLD, _INFER_NEW)],
    "torchao/quantization/qat/api.py": [(_CONVERT_OLD, _CONVERT_NEW), (
        "from .linear import FakeQuantizedLinear\n",
        "from .fake_quantizer import FakeQuantizerBase\nfrom .linear import FakeQuantizedLinear\n")],
    "torchao/quantization/qat/__init__.py": [(_INIT_OLD, _INIT_NEW), (_INIT2_OLD, _INIT2_NEW),
                                             (_INIT3_OLD, _INIT3_NEW)],
    "torchao/core/config.py": [(_ALLOWED_OLD, _ALLOWED_NEW)],
}


def edited_files(tree: pathlib.Path) -> dict[str, tuple[str, str]]:
    """Path -> (v0.18.0 text, edited text) of torchao's files the patch changes."""
    out = {}
    for rel, replacements in EDITS.items():
        path = tree / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: is {tree} a pytorch/ao checkout at {AO_TAG}?")
        before = text = path.read_text()
        for old, new in replacements:
            if text.count(old) != 1:
                raise ValueError(f"{rel} differs from pytorch/ao {AO_TAG} (an edit's anchor is not there once)")
            text = text.replace(old, new)
        out[rel] = (before, text)
    fqc = out["torchao/quantization/qat/fake_quantize_config.py"]
    if "Callable" not in fqc[0].split("import torch")[0]:
        imports = re.search(r"from typing import ([^\n]+)\n", fqc[1])
        names = sorted(set(n.strip() for n in imports.group(1).split(",")) | {"Callable", "Dict"})
        out["torchao/quantization/qat/fake_quantize_config.py"] = (
            fqc[0], fqc[1].replace(imports.group(0), f"from typing import {', '.join(names)}\n", 1))
    return out


def _ruff(files: dict[str, str], tree: pathlib.Path) -> dict[str, str]:
    """The files as ``ruff check --fix`` leaves them under torchao's ruff.toml; raises if anything is left."""
    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).with_name("ruff"))
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        shutil.copy(tree / "ruff.toml", root / "ruff.toml")
        # ruff sorts imports by whether a module resolves inside the tree: give it torchao's sources
        shutil.copytree(tree / "torchao", root / "torchao", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        cmd = [ruff, "check", "--config", str(root / "ruff.toml"), "--quiet", *files]
        subprocess.run(cmd + ["--fix"], cwd=root, capture_output=True, text=True)
        left = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if left.returncode:
            raise ValueError(f"ruff (torchao's ruff.toml) finds problems ruff cannot fix:\n{left.stdout}{left.stderr}")
        return {rel: (root / rel).read_text() for rel in files}


def _diff_new(rel: str, text: str) -> str:
    lines = text.rstrip("\n").splitlines(keepends=True)
    lines[-1] = lines[-1] if lines[-1].endswith("\n") else lines[-1] + "\n"
    body = "".join("+" + line for line in lines)
    return (f"diff --git a/{rel} b/{rel}\nnew file mode 100644\n--- /dev/null\n+++ b/{rel}\n"
            f"@@ -0,0 +1,{len(lines)} @@\n{body}")


def _diff_edit(rel: str, before: str, after: str) -> str:
    diff = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                f"a/{rel}", f"b/{rel}")
    return f"diff --git a/{rel} b/{rel}\n" + "".join(diff)


def build_patch(out_path, ao_tree=None) -> pathlib.Path:
    if not (ao_tree or DEFAULT_TREE):
        raise FileNotFoundError(f"no pytorch/ao checkout given (pass --ao PATH or set QSAM2_AO_TREE; tag {AO_TAG})")
    tree = pathlib.Path(ao_tree or DEFAULT_TREE)
    if not (tree / "ruff.toml").is_file():
        raise FileNotFoundError(f"no pytorch/ao checkout at {tree} (pass --ao PATH or set QSAM2_AO_TREE; tag {AO_TAG})")
    edits = edited_files(tree)
    added = new_files()
    clashes = [rel for rel in added if (tree / rel).exists()]
    if clashes:
        raise ValueError(f"{tree} already has {clashes[:3]}: apply the patch to a clean {AO_TAG} checkout")
    checked = _ruff({**added, **{rel: after for rel, (_, after) in edits.items()}}, tree)
    parts = [_diff_edit(rel, before, checked[rel]) for rel, (before, _) in sorted(edits.items())]
    parts += [_diff_new(rel, checked[rel]) for rel in sorted(added)]
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text("".join(parts))
    os.replace(tmp, out_path)
    return out_path
