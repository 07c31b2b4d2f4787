"""From NNCF's op-level graph to module names: which op calls which Linear / Conv2d, and which of NNCF's own
quantizers act on which tensors.

NNCF names ops by call path and counter (``trunk/attn/qkv/linear/3``: ModuleList indices are lost), so layers are
identified through the constant feeding the op's weight port, whose name is the parameter's
(``trunk.blocks.3.attn.qkv.weight``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from . import _nncf as N

Select = Callable[[str, nn.Module], bool]


def build_graph(model: nn.Module, example_input):
    """NNCF's graph of an NNCF-wrapped model (hooks included)."""
    return N.GraphModelWrapper(model, example_input).build_graph()


def const_input(node, port: int, graph):
    """The constant (parameter) node feeding ``node``'s ``port``, through quantizers; None for activations."""
    try:
        return N.get_const_node(node, port, graph)
    except N.InternalError:  # NNCF raises when the port is fed by a non-constant subgraph
        return None


@dataclass(frozen=True)
class Target:
    """One call of a Linear / Conv2d module in the traced forward."""

    fqn: str  # module name, relative to the NNCF-wrapped model
    module: nn.Module
    node: str  # NNCF op name, e.g. "trunk/attn/qkv/linear/3"
    weight: str  # parameter name, e.g. "trunk.blocks.3.attn.qkv.weight"


def find_targets(model: nn.Module, graph, select: Optional[Select] = None) -> list[Target]:
    """Every call of a Linear / Conv2d module whose weight is its own parameter (``select(fqn, module)`` filters)."""
    modules = dict(model.named_modules())
    targets = []
    for node in graph.get_nodes_by_metatypes(N.LINEAR_METATYPES):
        const = const_input(node, 1, graph)
        name = getattr(getattr(const, "layer_attributes", None), "name", None)
        if name is None or not name.endswith(".weight"):
            continue  # a functional call on a computed weight: not a module's layer
        fqn = name[: -len(".weight")]
        module = modules.get(fqn)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and (select is None or select(fqn, module)):
            targets.append(Target(fqn, module, node.node_name, name))
    return targets


def _consumers(graph, node) -> set[tuple[str, int]]:
    """``(op, input port)`` pairs reached from ``node``'s output through quantizers and rearranging ops."""
    found, stack, seen = set(), [node], set()
    while stack:
        current = stack.pop()
        for edge in graph.get_output_edges(current):
            nxt = edge.to_node
            if nxt.node_type in N.QUANTIZE_NODE_TYPES or nxt.metatype in N.AGNOSTIC_METATYPES:
                if nxt.node_name not in seen:
                    seen.add(nxt.node_name)
                    stack.append(nxt)
            else:
                found.add((nxt.node_name, edge.input_port_id))
    return found


def nncf_quantizers(model: nn.Module, graph) -> dict[str, tuple[str, set[tuple[str, int]]]]:
    """NNCF's own quantizer hooks: ``{hook name: ("weight", {(op, port)}) or ("activation", consumers)}``; every
    place a quantizer is registered (NNCF registers one quantizer module at several places for a tensor several
    ops read)."""
    result = {}
    for name, hook in N.get_hook_storage(model).named_hooks(remove_duplicate=False):
        if not isinstance(hook, N.BaseQuantizer):
            continue
        hook_type, op, port = N.decode_hook_name(name)
        if hook_type == "pre_hooks":
            node = graph.get_node_by_name(op)
            kind = "weight" if const_input(node, port, graph) is not None else "activation"
            result[name] = (kind, {(op, port)})
        else:
            node = graph.get_node_by_name(op)
            kind = "weight" if node.metatype.__name__ == "PTConstNoopMetatype" else "activation"
            result[name] = (kind, _consumers(graph, node))
    return result
