"""LSC (or a baseline core quantizer) as NNCF hooks on an NNCF-quantized model, ready for an ordinary training
loop: NNCF's QAT flow (``nncf.quantize`` -> ``model.train()`` -> optimizer steps) with Q-SAM2's quantizers.

Placement (chosen where the issue is silent):

* weights: a post-hook on the parameter, by name (immune to NNCF's op counters, where NNCF's own weight
  compression and strip expect weight hooks); it replaces NNCF's weight quantizer of that op;
* activations: a pre-hook on the layer's input port, the tensor the torchao path's ``input_quantizer`` sees (so
  both paths compute the same thing) and a linear/conv op counter that TorchScript tracing does not shift
  (``reference/nncf.md`` §4.3). One hook per module, shared by all of its calls, as in the torchao module swap.
  NNCF's own activation quantizers whose every consumer is now quantized by LSC are removed; the others
  (attention matmuls, residual adds, ...) stay unless ``keep_nncf=False`` removes every NNCF quantizer.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

from torch import nn

from qsam2_ext.core import LayerQuant, effective_group_size, layer_quantizers

from . import _nncf as N
from .graph import build_graph, find_targets, nncf_quantizers
from .hooks import QSAM2FakeQuantize

def attach_qsam2(model: nn.Module, example_input, layers: Mapping[str, LayerQuant], keep_nncf: bool = True) -> dict:
    """Put Q-SAM2 fake quantizers on ``layers`` (module name -> ``qsam2_ext.core.settings.LayerQuant``, or anything
    with its fields and ``*_options()``, such as torchao's ``QSAM2Config``) of an NNCF-wrapped (or plain) model, in
    place. Everything is checked before the first hook changes. Returns a summary."""
    model = N.wrap_model(model)
    graph = build_graph(model, example_input)
    targets = find_targets(model, graph, lambda fqn, m: fqn in layers)
    missing = sorted(set(layers) - {t.fqn for t in targets})
    if missing:
        raise ValueError(f"{len(missing)} layer(s) to quantize are not Linear/Conv2d layers called by the traced "
                         f"forward: {missing[:5]}")
    storage = N.get_hook_storage(model)
    if any(isinstance(h, QSAM2FakeQuantize) for _, h in storage.named_hooks()):
        raise RuntimeError("the model already carries Q-SAM2 hooks")
    hooks, covered = {}, set()
    for t in targets:
        if t.fqn not in hooks:
            config = layers[t.fqn]
            group = effective_group_size(t.module.weight[0].numel(), config.group_size)
            weight_q, input_q = layer_quantizers(t.module, config.method, config.bits, config.act_bits, group,
                                                 config.act_per_channel, config.weight_options(),
                                                 config.input_options())
            hooks[t.fqn] = (QSAM2FakeQuantize(weight_q), input_q and QSAM2FakeQuantize(input_q))
        covered.add((t.node, 1))
        if hooks[t.fqn][1] is not None:
            covered.add((t.node, 0))
    removed = [name for name, (_, consumers) in nncf_quantizers(model, graph).items()
               if not keep_nncf or (consumers and consumers <= covered)]
    for name in removed:
        storage.delete_hook(name)
    done = set()
    for t in targets:
        weight_hook, input_hook = hooks[t.fqn]
        if t.fqn not in done:
            N.register_post_function_hook(model, t.weight, 0, weight_hook)
            done.add(t.fqn)
        if input_hook is not None:
            N.register_pre_function_hook(model, t.node, 0, input_hook)
    return {"layers": len(hooks), "calls": len(targets), "removed_nncf_quantizers": removed,
            "kept_nncf_quantizers": [n for n, h in storage.named_hooks() if isinstance(h, N.BaseQuantizer)]}


def retarget_nncf(model: nn.Module, example_input, select: Callable[[str, nn.Module], bool], bits: int,
                  act_bits: Optional[int], keep_nncf: bool = True) -> dict:
    """NNCF's own QAT at other bit widths: NNCF's quantizers of the selected layers' weights get ``bits``, those
    feeding their inputs ``act_bits`` (None: removed, float inputs); with ``keep_nncf=False`` every other NNCF
    quantizer is removed. NNCF's quantizer class, ranges and range-learning gradient are kept."""
    graph = build_graph(model, example_input)
    targets = find_targets(model, graph, select)
    if not targets:
        raise ValueError("no selected Linear/Conv2d layer in the traced model")
    weights = {(t.node, 1) for t in targets}
    inputs = {(t.node, 0) for t in targets}
    storage = N.get_hook_storage(model)
    hooks = dict(storage.named_hooks())
    changed, removed = [], []
    for name, (kind, consumers) in nncf_quantizers(model, graph).items():
        if kind == "weight" and consumers & weights:
            set_quantizer_bits(hooks[name], bits)
            changed.append(name)
        elif kind == "activation" and consumers & inputs and act_bits is not None:
            set_quantizer_bits(hooks[name], act_bits)
            changed.append(name)
        elif not keep_nncf or (kind == "activation" and consumers & inputs):
            storage.delete_hook(name)
            removed.append(name)
    return {"layers": len({t.fqn for t in targets}), "retargeted": changed, "removed_nncf_quantizers": removed}


def set_quantizer_bits(quantizer: "N.BaseQuantizer", bits: int) -> None:
    """Re-target one of NNCF's own quantizers to ``bits`` the way NNCF's low-bit HW spaces define them
    (``q4_w``/``q2_w``/``q4_tn``: full range, no narrowing); kept in its spec so ``get_config`` round-trips."""
    if bits != quantizer.num_bits:
        quantizer._narrow_range = quantizer._qspec.narrow_range = False
        quantizer._qspec.num_bits = bits
        quantizer.num_bits = bits
