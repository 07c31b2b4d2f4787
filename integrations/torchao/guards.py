"""A ``torch.compile`` guard filter that checks packed weights as weights, not as the tensors inside them.

On every call of a compiled model dynamo checks each packed weight: its type, its shape, dtype and device, its
metadata (bits, shape, activation bits) and, through ``__tensor_flatten__``, the names of its inner tensors and
each inner tensor's shape, strides and dtype. The inner checks cost more than all the others together: on SAM2's
encoders, with one packed weight per Linear, they add milliseconds of host time per call, which at batch 1 is
latency (``benchmarks/compile_overhead.py``; ``benchmarks/results/speed.md``).

    compiled = torch.compile(model, options={"guard_filter_fn": skip_guard_on_packed_internals_unsafe})
    # with torch's own filter as well
    both = combine_guard_filters(skip_guard_on_packed_internals_unsafe,
                                 torch.compiler.skip_guard_on_all_nn_modules_unsafe)
"""

from __future__ import annotations

from typing import Callable, Sequence

from .packed_tensor import QSAM2PackedTensor

GuardFilter = Callable[[Sequence], list]


def skip_guard_on_packed_internals_unsafe(guard_entries) -> list[bool]:
    """A ``guard_filter_fn``: keep every guard but those on packed weights' inner tensors and their list of names.

    The weights' own guards stay, so a packed weight swapped for a float one, or for one of another shape, dtype,
    bit width or activation width, still recompiles. Unsafe in the sense of torch's
    ``skip_guard_on_all_nn_modules_unsafe``: a packed weight swapped after compiling for one that differs only in
    its grids (group size, scale dtype, static or dynamic activation grid) is not noticed; after requantizing a
    compiled model, compile it again (``torch._dynamo.reset()``). Combine with other filters by
    ``combine_guard_filters``."""
    inside = tuple(f"{entry.name}." for entry in guard_entries
                   if entry.has_value and isinstance(entry.value, QSAM2PackedTensor))
    return [not (inside and entry.name.startswith(inside)) for entry in guard_entries]


def combine_guard_filters(*filters: GuardFilter) -> GuardFilter:
    """One ``guard_filter_fn`` keeping the guards that every one of ``filters`` keeps."""

    def keep(guard_entries) -> list[bool]:
        return [all(kept) for kept in zip(*(f(guard_entries) for f in filters))]

    return keep
