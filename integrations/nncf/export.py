"""OpenVINO IR export of an NNCF model carrying Q-SAM2 hooks, with integer weights and ``FakeQuantize`` inputs.

``export_openvino``:

1. reads every Q-SAM2 layer's grid from its hooks (baked ``QSAM2WeightDecompressor`` codes, or the codes a weight
   fake quantizer rounds onto) and its input quantizer's static range;
2. converts a copy of the model in which those layers carry their grid values as plain float weights and no Q-SAM2
   hook (NNCF's own quantizers, if kept, export as NNCF exports them: ``FakeQuantize``);
3. lowers each layer in the IR (``openvino_lowering``): integer weight constants, input ``FakeQuantize``, and for
   layers with quantized inputs the grid's offset folded into symmetric int8 weights at compile time
   (``offset="fold"``, the default: the fast path) or added back exactly after the layer (``offset="exact"``);
4. saves the IR (``compress_to_fp16`` is the caller's choice: it rounds the float constants, scales and
   ``FakeQuantize`` ranges included, to f16; integer weights are unaffected), reads the file back, runs it on
   OpenVINO's CPU plugin in f32 and compares it with the torch model.

Before converting, ``check_hook_tensors`` checks that every remaining hook sees the same tensor under TorchScript
tracing (what ``ov.convert_model`` uses) as in eager mode: NNCF keys activation hooks by op counters, which traced
shape arithmetic can shift (``reference/nncf.md`` §4.3).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections import Counter
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from . import _nncf as N
from .graph import build_graph, find_targets
from .hooks import QSAM2FakeQuantize, QSAM2WeightDecompressor


class TupleOutputs(nn.Module):
    """The model with its (nested dict / list) outputs flattened to a tuple, as TorchScript tracing needs; several
    inputs positionally (an example input that is a tuple)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *x):
        return tuple(tree_leaves(self.model(*x)))


def _inputs(example_input) -> tuple:
    """The model's positional inputs: a tuple of tensors, or one tensor."""
    return tuple(example_input) if isinstance(example_input, tuple) else (example_input,)


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


def check_hook_tensors(model: nn.Module, example_input, rtol: float = 1e-4) -> int:
    """Raise ``RuntimeError`` if any hook sees another tensor under TorchScript tracing than in eager mode;
    returns the number of hook calls checked. ``example_input``: a tensor, or a tuple of positional inputs."""
    model.eval()
    eager = _record(model, lambda: model(*_inputs(example_input)))
    try:
        traced = _record(model, lambda: torch.jit.trace(TupleOutputs(model), example_input, check_trace=False))
    except Exception as e:  # e.g. an op-keyed NNCF quantizer that lands on an integer shape tensor
        raise RuntimeError(f"tracing for export fails inside a hook ({type(e).__name__}: {e}); NNCF's own "
                           "activation hooks are keyed by op counters, which traced shape arithmetic shifts") from e
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


def _activation_range(hook: QSAM2FakeQuantize):
    q = hook.quantizer
    center, step = q.grid()
    half = (2 ** q.bits - 1) / 2 * step
    return (center - half).numpy(), (center + half).numpy()


@torch.no_grad()
def _input_means(model: nn.Module, hooks: dict, batches: Sequence[torch.Tensor]) -> dict:
    """``{id(hook): per-channel mean of its output}`` over ``batches``; ``hooks``: ``{id(hook): (hook, channel
    dim)}`` (1 for a convolution's input, -1 for a Linear's)."""
    sums, handles = {}, []

    def note(module, args, out):
        x = out.detach().double().movedim(hooks[id(module)][1], -1)
        total, count = sums.get(id(module), (0, 0))
        sums[id(module)] = (total + x.reshape(-1, x.shape[-1]).sum(0), count + x.numel() // x.shape[-1])

    for hook, _ in hooks.values():
        handles.append(hook.register_forward_hook(note))
    try:
        for batch in batches:
            model(*_inputs(batch))
    finally:
        for h in handles:
            h.remove()
    return {k: (total / count).numpy() for k, (total, count) in sums.items()}


@torch.no_grad()
def layer_specs(model: nn.Module, example_input: torch.Tensor,
                calibration: Optional[Sequence[torch.Tensor]] = None) -> dict:
    """``{weight parameter name: (LayerSpec, float weight)}`` of every Q-SAM2 layer of an NNCF-wrapped model: its
    grid, its input quantizer's range, and the weight values the torch model computes with; with ``calibration``
    (input batches) also the mean of each quantized input per channel (``LayerSpec.act_mean``)."""
    from .openvino_lowering import LayerSpec

    params = dict(model.named_parameters())
    specs = {}
    for name, hook in N.get_hook_storage(model).named_hooks():
        _, target, _ = N.decode_hook_name(name)
        if isinstance(hook, QSAM2WeightDecompressor):
            bits, codes, center, step = hook.bits, hook.codes(params[target]), hook.center, hook.step
        elif isinstance(hook, QSAM2FakeQuantize) and hook.is_weight:
            bits, (codes, center, step) = hook.quantizer.bits, hook.quantizer.encode(params[target])
        else:
            continue
        out, groups = center.shape
        spec = LayerSpec(target, bits, codes.reshape(out, groups, -1).numpy(), center.float().numpy(),
                         step.float().numpy())
        specs[target] = (spec, hook(params[target]).detach().float())
    inputs = [(name, hook) for name, hook in N.get_hook_storage(model).named_hooks(remove_duplicate=False)
              if isinstance(hook, QSAM2FakeQuantize) and not hook.is_weight]
    if inputs:  # layer calls by op name, traced on the float copy (NNCF's graph sees through baked weights there)
        plain = _float_copy(model, specs)
        weight_of = {t.node: t.weight for t in find_targets(plain, build_graph(plain, example_input))}
        layer_of = {}
        for name, hook in inputs:
            _, op, port = N.decode_hook_name(name)
            weight = weight_of.get(op)
            if port != 0 or weight not in specs:
                raise ValueError(f"{name}: an input quantizer that is not on a quantized layer's input")
            layer_of[name] = weight
        channel = {id(h): (h, 1 if specs[layer_of[n]][1].dim() == 4 else -1) for n, h in inputs}
        means = _input_means(model, channel, calibration) if calibration else {}
        for name, hook in inputs:
            spec = specs[layer_of[name]][0]
            spec.act_bits = hook.quantizer.bits
            spec.act_lo, spec.act_hi = _activation_range(hook)
            spec.act_mean = means.get(id(hook))
    return specs


def _float_copy(model: nn.Module, specs: dict) -> nn.Module:
    """A copy without Q-SAM2 hooks whose quantized layers hold their grid values as float weights."""
    copied = copy.deepcopy(model)
    storage = N.get_hook_storage(copied)
    for name, hook in list(storage.named_hooks(remove_duplicate=False)):
        if isinstance(hook, (QSAM2FakeQuantize, QSAM2WeightDecompressor)):
            storage.delete_hook(name)
    for target, (_, values) in specs.items():
        owner, _, attr = target.rpartition(".")
        setattr(copied.get_submodule(owner), attr, nn.Parameter(values.clone(), requires_grad=False))
    return copied


def _count_ran(model: nn.Module, run) -> tuple[dict, Any]:
    """Hook modules (each shared module once) that ran during ``run()``, by class, and ``run()``'s result."""
    ran, handles = {}, []

    def note(module, args):  # returns None: the hook's input stays as it is
        ran[id(module)] = type(module).__name__

    for _, hook in N.get_hook_storage(model).named_hooks():
        handles.append(hook.register_forward_pre_hook(note))
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    return dict(Counter(ran.values())), out


def runtime_precisions(compiled) -> dict:
    """``{layer type: {executed precision: count}}`` from a compiled model's runtime graph (MatMul-like and
    convolution layers)."""
    found: dict = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("FullyConnected", "FullyConnectedCompressed", "MatMul", "Convolution"):
            precision = info["runtimePrecision"].astype(str)
            found.setdefault(kind, Counter())[precision] += 1
    return {k: dict(v) for k, v in found.items()}


def _run(request, compiled, inputs: list, device) -> list[torch.Tensor]:
    """Run a compiled IR's infer request on torch tensors; its outputs as torch tensors on ``device``."""
    request.infer([t.detach().cpu().numpy() for t in inputs])
    return [torch.from_numpy(request.get_output_tensor(i).data.copy()).to(device)
            for i in range(len(compiled.outputs))]


def _save(ov_model, path: str, compress_to_fp16: bool) -> None:
    """Write ``path`` (.xml) and its .bin through a temporary folder beside them, the .bin first: a reader never
    sees a new .xml without its .bin, nor a half-written file."""
    import openvino as ov

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=directory, prefix=".ir.")
    try:
        ov.save_model(ov_model, os.path.join(tmp, "m.xml"), compress_to_fp16=compress_to_fp16)
        os.replace(os.path.join(tmp, "m.bin"), path[: -len(".xml")] + ".bin")  # read_model pairs x.xml, x.bin
        os.replace(os.path.join(tmp, "m.xml"), path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert(module: nn.Module, example: Any, inputs: list, path: str, compress_to_fp16: bool) -> None:
    """``ov.convert_model`` of ``module`` traced on ``example`` with input shapes (and types) ``inputs``, written to
    ``path`` (``_save``)."""
    import openvino as ov

    with torch.no_grad():
        ov_model = ov.convert_model(module, example_input=example, input=inputs)
    _save(ov_model, path, compress_to_fp16)


def export_openvino(model: nn.Module, example_input, path: Optional[str] = None, *,
                    compress_to_fp16: bool = False, offset: str = "fold", dynamic_shapes: bool = False,
                    calibration: Optional[Sequence[torch.Tensor]] = None,
                    input_shapes: Optional[list] = None) -> tuple[Any, dict]:
    """Lower ``model`` (NNCF-wrapped, with Q-SAM2 hooks, baked or not) to an OpenVINO IR at ``path`` (``.xml``;
    a temporary file when None), read it back, compare OpenVINO's f32 outputs with the torch model's, and return
    ``(ov_model read back, report)``. Static shapes (those of ``example_input``) unless ``dynamic_shapes`` (then the
    batch and, for ``N×C×H×W`` images, the sides are free: ``input_shape``). ``offset``: ``"fold"`` or
    ``"exact"`` (``openvino_lowering``). ``calibration``: input batches on which to measure each quantized
    input's mean; with ``offset="fold"`` each folded layer's bias then gets the fold's bias correction
    (``openvino_lowering.fold_bias_correction``). A model of several inputs takes a tuple ``example_input`` (and
    tuple ``calibration`` items), and ``input_shapes`` gives the IR's input shapes (-1 for a dynamic dimension;
    default: the example's, or ``dynamic_shapes``' rule for one input). Needs the ``openvino`` extra."""
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError("OpenVINO export needs the openvino extra: pip install 'qsam2_ext[openvino]'") from e
    from .openvino_lowering import OFFSETS, float_constants_by_value, lower_layer

    if path is not None and not path.endswith(".xml"):
        raise ValueError(f"path must end in .xml, got {path!r}")
    if offset not in OFFSETS:
        raise ValueError(f"offset must be one of {OFFSETS}, got {offset!r}")
    model.eval()
    specs = layer_specs(model, example_input, calibration if offset == "fold" else None)
    if not specs:
        raise ValueError("the model has no Q-SAM2 layer to export")
    with torch.no_grad():
        hooks_ran, expected = _count_ran(model, lambda: TupleOutputs(model)(*_inputs(example_input)))
        plain = _float_copy(model, specs)
        remaining = any(True for _ in N.get_hook_storage(plain).named_hooks())  # NNCF's own, if kept
        calls = check_hook_tensors(plain, example_input) if remaining else 0
        shapes = input_shapes or [input_shape(x, dynamic_shapes) for x in _inputs(example_input)]
        ov_model = ov.convert_model(TupleOutputs(plain), example_input=example_input, input=shapes)
    del plain
    by_value = float_constants_by_value(ov_model, {tuple(v.shape) for _, v in specs.values()})
    rewritten = 0
    for spec, values in specs.values():
        const = by_value.get((tuple(values.shape), values.numpy().tobytes()))
        if const is None:
            raise RuntimeError(f"{spec.name}: its weight constant is not in the converted IR")
        rewritten += lower_layer(const, spec, offset)
    ov_model.validate_nodes_and_infer_types()

    scratch = tempfile.mkdtemp() if path is None else None
    target = path or os.path.join(scratch, "model.xml")
    try:
        _save(ov_model, target, compress_to_fp16)
        size = os.path.getsize(target[: -len(".xml")] + ".bin")
        core = ov.Core()
        read_back = core.read_model(target)
        # f32 and no dynamic quantization of activations: the integer kernels the check leaves on are exact
        compiled = core.compile_model(read_back, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
        results = compiled([x.numpy() for x in _inputs(example_input)])
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    diffs, sqnr = [], []
    for i, e in enumerate(expected):
        got = torch.from_numpy(results[i]).to(e.dtype)
        err = (got - e).double()
        diffs.append(float(err.abs().max() / e.abs().max().clamp_min(1e-12)))
        sqnr.append(float(10 * torch.log10(e.double().pow(2).sum() / err.pow(2).sum().clamp_min(1e-30))))
    constants = Counter(op.get_element_type().get_type_name() for op in read_back.get_ops()
                        if op.get_type_name() == "Constant")
    kinds = Counter(op.get_type_name() for op in read_back.get_ops())
    return read_back, {
        "hooks_ran": hooks_ran, "hook_calls_checked": calls, "layers": len(specs), "ops_rewritten": rewritten,
        "weights": dict(Counter(f"{s.bits}-bit" for s, _ in specs.values())),
        "quantized_inputs": sum(s.act_bits is not None for s, _ in specs.values()),
        "fake_quantize_ops": kinds["FakeQuantize"], "offset": offset,
        "bias_corrected": sum(s.act_mean is not None for s, _ in specs.values()) if offset == "fold" else 0,
        "offset_terms": sum(op.get_friendly_name().endswith("/offset") for op in read_back.get_ops()),
        "constants": dict(constants), "compress_to_fp16": compress_to_fp16,
        "ir_bytes": size, "path": path, "max_rel_diff_vs_torch": max(diffs), "min_sqnr_db_vs_torch": min(sqnr),
        "runtime_precisions": runtime_precisions(compiled),
    }



def input_shape(example_input: torch.Tensor, dynamic: bool) -> list[int]:
    """The IR's input shape: the example's, or with the batch (and for ``N×C×H×W`` images the sides) free."""
    shape = list(example_input.shape)
    if not dynamic:
        return shape
    return [-1, shape[1], -1, -1] if len(shape) == 4 else [-1] + shape[1:]


def float_ir(model: nn.Module, example_input: torch.Tensor, path: str, *, compress_to_fp16: bool,
             dynamic_shapes: bool = False):
    """The IR of a model without Q-SAM2 hooks (float, or NNCF's own quantizers) at ``path``, read back."""
    import openvino as ov

    _convert(TupleOutputs(model.eval()), example_input, [input_shape(example_input, dynamic_shapes)], path,
             compress_to_fp16)
    return ov.Core().read_model(path)
