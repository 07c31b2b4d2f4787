"""``skip_guard_on_packed_internals_unsafe``: which of dynamo's guards it drops, and what a compiled model still
notices."""

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torchao.quantization import quantize_

from qsam2_ext import QSAM2PackedTensor, qsam2_config, skip_guard_on_packed_internals_unsafe

INNER = ("packed", "center", "step")


def _net(bits=2):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16), nn.Linear(16, 16)).eval()
    quantize_(net, qsam2_config(bits=bits), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn != "3")
    return net


def _compiled(net, decisions: list):
    def spy(entries):
        keep = skip_guard_on_packed_internals_unsafe(entries)
        decisions.extend(zip(entries, keep))
        return keep

    torch._dynamo.reset()
    return torch.compile(net, backend="eager", options={"guard_filter_fn": spy})


def test_drops_exactly_the_guards_inside_packed_weights():
    decisions = []
    net = _net()
    x = torch.randn(4, 32)
    with torch.inference_mode():
        torch.testing.assert_close(_compiled(net, decisions)(x), net(x), rtol=0, atol=0)
    packed = {e.name for e, _ in decisions if e.has_value and isinstance(e.value, QSAM2PackedTensor)}
    assert len(packed) == 2
    dropped = [e for e, keep in decisions if not keep]
    # everything dropped lies inside a packed weight; everything inside one is dropped
    assert dropped and all(any(e.name.startswith(p + ".") for p in packed) for e in dropped)
    inner_matches = {e.name for e in dropped if e.guard_type == "TENSOR_MATCH"}
    assert inner_matches == {f"{p}.{t}" for p in packed for t in INNER}
    kept = [e for e, keep in decisions if keep]
    assert not any(e.name.startswith(p + ".") for e in kept for p in packed)
    for p in packed:  # the packed weight itself stays guarded: type, shape/dtype/device, bits and widths
        assert {"TYPE_MATCH", "TENSOR_MATCH", "TENSOR_SUBCLASS_METADATA_MATCH"} <= {
            e.guard_type for e in kept if e.name == p}
    # the float layer's weight and every bias keep their guards
    assert sum(e.guard_type == "TENSOR_MATCH" and e.name.endswith("._parameters['weight']") for e in kept) == 3
    assert sum(e.guard_type == "TENSOR_MATCH" and e.name.endswith("._parameters['bias']") for e in kept) == 3


def test_models_without_packed_weights_keep_every_guard():
    decisions = []
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)).eval()
    with torch.inference_mode():
        _compiled(net, decisions)(torch.randn(2, 8))
    assert decisions and all(keep for _, keep in decisions)


@pytest.mark.parametrize("swap", ["float", "4-bit"])
def test_a_swapped_weight_of_another_kind_still_recompiles(swap):
    """With the inner guards gone, the packed weight's own guards still catch a float weight (type) or a weight of
    another bit width (metadata) put in its place after compiling: dynamo compiles again and the output follows."""
    net = _net()
    x = torch.randn(4, 32)
    compiled = _compiled(net, [])
    replacement = nn.Linear(64, 16).weight if swap == "float" else _net(bits=4)[2].weight  # made as the first was
    with torch.inference_mode():
        compiled(x)
        before = counters["frames"]["total"]
        net[2].weight = replacement
        torch.testing.assert_close(compiled(x), net(x), rtol=0, atol=0)
    assert counters["frames"]["total"] > before


def test_combined_filters_keep_what_every_filter_keeps():
    from qsam2_ext import combine_guard_filters

    entries = ["a", "b", "c", "d"]
    first = combine_guard_filters(lambda e: [True, True, False, False], lambda e: [True, False, True, False])
    assert first(entries) == [True, False, False, False]
    assert combine_guard_filters(lambda e: [True, False, True, True])(entries) == [True, False, True, True]
