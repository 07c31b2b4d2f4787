"""Layout ops of ``QSAM2PackedTensor``, as torchao's own tensors implement them for sharded and stitched loading
(vLLM's ``narrow`` + ``copy_``, tensor-parallel ``slice``, ``chunk`` and ``cat`` of shards, row gathers):
``slice`` / ``narrow`` / ``split``, ``cat``, ``index`` along the output dim, ``view`` / ``reshape`` that keep each
output row, ``to`` with a dtype.

Rows (output channels) are independent, so any cut along dim 0 is a view of the codes and grids. A cut along the
inputs (dim 1 of a Linear weight) must fall between packing groups (4 codes a byte at 2 bits, 8 codes in 3 bytes
at 3 bits, 2 at 4 bits) and between grid groups; anything else raises instead of repacking silently.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import return_and_correct_aliasing
from torchao.utils import fill_defaults

from qsam2_ext.core import packing_group

from .packed_tensor import QSAM2PackedTensor

aten = torch.ops.aten
implements = QSAM2PackedTensor.implements


def _rebuild(t: QSAM2PackedTensor, packed, center, step, weight_shape, act_center=None, act_step=None, dtype=None):
    return QSAM2PackedTensor(packed, center, step, t.bits, weight_shape, dtype or t.dtype,
                             t.act_center if act_center is None else act_center,
                             t.act_step if act_step is None else act_step, t.act_bits)


def _bounds(start, end, n: int) -> tuple[int, int]:
    start = 0 if start is None else (start + n if start < 0 else start)
    end = n if end is None else (end + n if end < 0 else end)
    return max(0, min(start, n)), max(0, min(end, n))


def _input_cut(t: QSAM2PackedTensor, start: int, end: int, what: str) -> tuple[slice, slice]:
    """The byte and grid-group slices of inputs ``start:end`` of a 2-D weight; raises where a cut would split a
    packing group or a grid group."""
    k = t.weight_shape[1]
    per, nbytes = packing_group(t.bits)
    groups = t.center.shape[1]
    group = k // groups
    if start % per or (end % per and end != k):
        raise NotImplementedError(f"{what}: inputs {start}:{end} of a {t.bits}-bit packed weight must start and end "
                                  f"at multiples of {per} (its packing group) or at the row end")
    if groups > 1 and (start % group or end % group):
        raise NotImplementedError(f"{what}: inputs {start}:{end} split the weight's groups of {group} inputs")
    byte_end = -(-end // per) * nbytes
    grid = slice(None) if groups == 1 else slice(start // group, end // group)
    return slice(start // per * nbytes, byte_end), grid


@implements(aten.slice.Tensor)
def _slice(func, types, args, kwargs):
    t, dim, start, end, step = fill_defaults(args, 5, [0, None, None, 1])
    dim = dim % t.ndim
    if step != 1:
        raise NotImplementedError(f"slicing a QSAM2PackedTensor with step {step}")
    start, end = _bounds(start, end, t.shape[dim])
    if dim == 0:
        new = _rebuild(t, t.packed[start:end], t.center[start:end], t.step[start:end], (end - start, *t.shape[1:]))
    elif dim == 1 and t.ndim == 2:
        byte_cut, grid_cut = _input_cut(t, start, end, "slice")
        act = {}
        if t.act_center is not None and t.act_center.ndim == 1:  # per-input-channel activation grid
            act = dict(act_center=t.act_center[start:end], act_step=t.act_step[start:end])
        new = _rebuild(t, t.packed[:, byte_cut], t.center[:, grid_cut], t.step[:, grid_cut], (t.shape[0], end - start),
                       **act)
    else:
        raise NotImplementedError(f"slicing a {t.ndim}-D QSAM2PackedTensor along dim {dim}")
    return return_and_correct_aliasing(func, args, kwargs, new)


@implements([aten.split.Tensor, aten.split_with_sizes.default])
def _split(func, types, args, kwargs):
    t, sizes, dim = fill_defaults(args, 3, [None, 0])
    n = t.shape[dim]
    if isinstance(sizes, int):
        sizes = [min(sizes, n - start) for start in range(0, n, sizes)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [aten.slice.Tensor(t, dim, start, start + size) for start, size in zip(starts, sizes)]


def _same_grids(tensors, what: str) -> None:
    first = tensors[0]
    for t in tensors[1:]:
        if not isinstance(t, QSAM2PackedTensor) or (t.bits, t.dtype, t.act_bits) != (first.bits, first.dtype,
                                                                                     first.act_bits):
            raise ValueError(f"{what}: all tensors must be QSAM2PackedTensors of the same bits, dtype and act_bits")
        for name in ("act_center", "act_step"):
            a, b = getattr(first, name), getattr(t, name)
            if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
                raise ValueError(f"{what}: the tensors have different activation grids")


@implements(aten.cat.default)
def _cat(func, types, args, kwargs):
    tensors, dim = fill_defaults(args, 2, [0])
    tensors = list(tensors)
    _same_grids(tensors, "cat")
    first = tensors[0]
    dim = dim % first.ndim
    if dim == 0:
        if any(t.shape[1:] != first.shape[1:] or t.center.shape[1] != first.center.shape[1] for t in tensors):
            raise ValueError("cat along dim 0: the tensors' inputs per row and grid groups must match")
        rows = sum(t.shape[0] for t in tensors)
        new = _rebuild(first, torch.cat([t.packed for t in tensors]), torch.cat([t.center for t in tensors]),
                       torch.cat([t.step for t in tensors]), (rows, *first.shape[1:]))
    elif dim == 1 and first.ndim == 2:
        per, _ = packing_group(first.bits)
        groups = [t.weight_shape[1] // t.center.shape[1] for t in tensors]
        if any(t.shape[0] != first.shape[0] for t in tensors) or any(t.shape[1] % per for t in tensors[:-1]) \
                or any(t.center.shape[1] == 1 for t in tensors) or len(set(groups)) > 1:
            raise NotImplementedError("cat along the inputs needs grouped grids of one group size and shards whose "
                                      f"widths are multiples of {per} codes")
        new = _rebuild(first, torch.cat([t.packed for t in tensors], 1), torch.cat([t.center for t in tensors], 1),
                       torch.cat([t.step for t in tensors], 1), (first.shape[0], sum(t.shape[1] for t in tensors)))
    else:
        raise NotImplementedError(f"cat of {first.ndim}-D QSAM2PackedTensors along dim {dim}")
    return new


@implements(aten.index.Tensor)
def _index(func, types, args, kwargs):
    t, indices = args[0], args[1]
    if len(indices) != 1 or indices[0] is None:
        raise NotImplementedError("indexing a QSAM2PackedTensor selects output rows (dim 0) only")
    rows = indices[0]
    if rows.dtype == torch.bool:
        rows = rows.nonzero().squeeze(-1)
    rows = rows.reshape(-1)
    return _rebuild(t, t.packed[rows], t.center[rows], t.step[rows], (rows.numel(), *t.shape[1:]))


@implements([aten.view.default, aten._unsafe_view.default])
def _view(func, types, args, kwargs):
    t, size = args[0], list(args[1])
    if -1 in size:
        known = 1
        for d in size:
            known *= d if d != -1 else 1
        size[size.index(-1)] = t.numel() // max(known, 1)
    rest = 1
    for d in size[1:]:
        rest *= d
    if not size or size[0] != t.shape[0] or rest != t.numel() // t.shape[0]:
        raise NotImplementedError(f"a QSAM2PackedTensor of shape {tuple(t.shape)} keeps its output rows: cannot "
                                  f"view it as {tuple(size)}")
    new = _rebuild(t, t.packed, t.center, t.step, tuple(size))
    return return_and_correct_aliasing(func, args, kwargs, new)


@implements(aten.select.int)
def _select(func, types, args, kwargs):
    raise NotImplementedError("a QSAM2PackedTensor keeps whole 2-D rows: select rows with narrow / slice / index")


@implements(aten._to_copy.default)
def _to_copy(func, types, args, kwargs):
    """``.to(device)`` moves the codes and grids; ``.to(dtype)`` changes the dtype the weight dequantizes to (the
    grids keep theirs, so the grid is unchanged)."""
    t = args[0]
    kw = t._get_to_kwargs(*args[1:], **kwargs)
    device, dtype = kw["device"], kw["dtype"]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"a QSAM2PackedTensor dequantizes to float32, bfloat16 or float16, not {dtype}")

    def move(x):
        return None if x is None else x.to(device, non_blocking=kw.get("non_blocking", False))

    new = QSAM2PackedTensor(move(t.packed), move(t.center), move(t.step), t.bits, t.weight_shape, dtype,
                            move(t.act_center), move(t.act_step), t.act_bits)
    return return_and_correct_aliasing(func, args, kwargs, new)
