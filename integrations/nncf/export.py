"""OpenVINO IR export of an NNCF model carrying Q-SAM2 hooks, with a check that every hook still quantizes the
tensor it quantized in eager mode.

``ov.convert_model`` traces with TorchScript, which turns Python shape arithmetic into traced ops; NNCF counts
ops to name them, so hooks keyed by an elementwise op's counter can fire on a different tensor after export
(``reference/nncf.md`` §4.3). ``check_hook_tensors`` records, for every hook call, the hook's name and the
shape, dtype and checksum of its input, eagerly and under ``torch.jit.trace``, and raises on any difference.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from . import _nncf as N


class TupleOutputs(nn.Module):
    """The model with its (nested dict / list) outputs flattened to a tuple, as TorchScript tracing needs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return tuple(tree_leaves(self.model(x)))


def _record(model: nn.Module, run) -> list[tuple]:
    calls, handles = [], []
    for name, hook in N.get_hook_storage(model).named_hooks(remove_duplicate=False):
        def note(module, args, name=name):
            x = args[0]
            calls.append((name, tuple(x.shape), x.dtype, float(x.detach().double().sum())))
        handles.append(hook.register_forward_pre_hook(note))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return calls


def check_hook_tensors(model: nn.Module, example_input: torch.Tensor, rtol: float = 1e-4) -> int:
    """Raise ``RuntimeError`` if any hook sees another tensor under TorchScript tracing than in eager mode;
    returns the number of hook calls checked."""
    model.eval()
    eager = _record(model, lambda: model(example_input))
    try:
        traced = _record(model, lambda: torch.jit.trace(TupleOutputs(model), example_input, check_trace=False))
    except Exception as e:  # e.g. an op-keyed NNCF quantizer that lands on an integer shape tensor
        raise RuntimeError(f"tracing for export fails inside a hook ({type(e).__name__}: {e}); hooks keyed by "
                           "elementwise-op counters are fragile under TorchScript: keep only weight and layer-input "
                           "hooks (keep_nncf=False)") from e
    problems = []
    for i in range(max(len(eager), len(traced))):
        e = eager[i] if i < len(eager) else None
        t = traced[i] if i < len(traced) else None
        if e is None or t is None or e[:3] != t[:3] or abs(e[3] - t[3]) > rtol * (abs(e[3]) + 1):
            problems.append(f"call {i}: eager {e and e[:3]} vs traced {t and t[:3]}")
    if problems:
        raise RuntimeError(f"{len(problems)} hook call(s) see a different tensor under tracing (export would "
                           "quantize the wrong tensors):\n  " + "\n  ".join(problems[:10]))
    return len(eager)


def export_openvino(model: nn.Module, example_input: torch.Tensor, path: Optional[str] = None) -> tuple[Any, dict]:
    """Check the hooks, convert to OpenVINO (``ov.convert_model``), compare OpenVINO's f32 outputs with the
    model's, and optionally save the IR. Returns ``(ov_model, report)``. Needs the ``openvino`` extra."""
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError("OpenVINO export needs the openvino extra: pip install 'qsam2_ext[openvino]'") from e
    calls = check_hook_tensors(model, example_input)
    wrapped = TupleOutputs(model.eval())
    with torch.no_grad():
        expected = wrapped(example_input)
        ov_model = ov.convert_model(wrapped, example_input=example_input)
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled(example_input.numpy())
    diffs = [float((torch.from_numpy(results[i]) - e).abs().max() / e.abs().max().clamp_min(1e-12))
             for i, e in enumerate(expected)]
    constants: dict[str, int] = {}
    for op in ov_model.get_ops():
        if op.get_type_name() == "Constant":
            kind = op.get_element_type().get_type_name()
            constants[kind] = constants.get(kind, 0) + 1
    if path is not None:
        ov.save_model(ov_model, path)
    return ov_model, {"hook_calls_checked": calls, "max_rel_diff_vs_torch": max(diffs), "constants": constants}
