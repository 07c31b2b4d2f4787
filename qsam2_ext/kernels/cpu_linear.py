"""The CPU path of a packed layer in eager PyTorch, chosen per kind of layer by measurement.

A packed Linear / Conv2d on a CPU runs one of these paths:

* ``"cached"``: the weight dequantized once and kept beside the packed codes (the float weight's memory again:
  speed bought with RAM, released when the weight goes), then the float op, as the float model runs it;
* ``"reference"``: the weight dequantized at every call (memory stays packed);
* ``"integer"``, inside ``integer_matmul()`` only: for a Linear with quantized inputs whose grids factor out of the
  sum, on CPUs with a fast exact int8 kernel (``qsam2_ext.core.fast_int8_product``), one int8 GEMM on the input's
  codes and the weight's codes (kept unpacked beside the packed ones, one byte a weight, with the weight's side of the
  rank terms).

``"cached"`` and ``"reference"`` give the reference's bits (two models, or a model and its fake-quantized twin,
agree exactly), so they are the default; ``"integer"`` equals them up to float rounding (``qsam2_ext.core.int_linear``;
in a whole model a rounding difference can move a later layer's input across a grid step). The first eager call of a
layer of each kind (op, input shape and dtype, weight shape, bits, grids) times every path the layer may take (the
fastest of ``REPEATS`` runs each on that input, after one warm-up) and keeps the fastest for every layer of that
kind: the per-call dequantization only if clearly faster than the cached weight (``REFERENCE_MARGIN``), the integer
product only if clearly faster than both (``INTEGER_MARGIN``). ``paths_taken`` / ``kinds_taken`` tell which ran
(``qsam2 quantize`` reports it); ``cpu_paths(path)`` pins one (``None``: measure). ``integer_matmul(force=True)``
runs the integer product on every layer that has it, measured or not; traced for ``torch.compile`` nothing here
applies: inductor fuses the reference expression (or, inside ``integer_matmul()``, the integer product).
"""

from __future__ import annotations

import time
import weakref
from typing import Callable, ContextManager, Optional

import torch

from qsam2_ext.core.int_linear import weight_columns

from .path_choice import PathChoice

PATHS = ("cached", "reference", "integer")
EXACT_PATHS = ("cached", "reference")
REPEATS = 3
# the per-call dequantization does strictly more work than the cached weight's product, so it can only win by
# timing noise (or where caching would push the weight out of memory bandwidth's favour): it must be this much
# faster to be kept
REFERENCE_MARGIN = 0.9
# the integer product is exact only up to float rounding: it is kept where it is clearly faster than both exact paths
INTEGER_MARGIN = 0.9
# per packed weight, kept off the tensor (whose attributes torch.save would write), by id: {"path": the last path it
# ran, "key" / "choice": its last layer key and measurement, "dense": its cached dequantized weight, "codes": (bias,
# int8 codes, weight columns)}; an entry goes with its weight (a plain dict by id, cleared by a finalizer: a
# WeakIdKeyDictionary lookup cost microseconds on every layer call)
_STATE: dict[int, dict] = {}
_CHOICE = PathChoice(PATHS)  # chosen: (layer key, exact paths only) -> (fastest path, seconds of each)


def cpu_paths(path: Optional[str]) -> ContextManager[None]:
    """Run every packed CPU Linear through ``path`` (where it has it; else the reference), or measure (``None``)."""
    return _CHOICE.force(path)


def state(weight) -> dict:
    """The CPU path's state of a packed weight (created empty on first use, dropped with the weight)."""
    entry = _STATE.get(id(weight))
    if entry is None:
        entry = _STATE[id(weight)] = {}
        weakref.finalize(weight, _STATE.pop, id(weight), None)
    return entry


def _seconds(fn: Callable[[], torch.Tensor]) -> float:
    """The fastest of ``REPEATS`` runs after a warm-up: other work on the cores (a process preempting this one for a
    few milliseconds) only adds time, and under load it hit two runs of three often enough to move the median."""
    fn()  # warm-up (and, for "cached" and "integer", the one unpacking)
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _fastest(times: dict[str, float]) -> str:
    path = "reference" if times["reference"] < REFERENCE_MARGIN * times["cached"] else "cached"
    if "integer" in times and times["integer"] < INTEGER_MARGIN * min(times["cached"], times["reference"]):
        path = "integer"
    return path


def run(weight, key: tuple, compute: Callable[[str], torch.Tensor], integer: bool) -> torch.Tensor:
    """The layer's output ``compute(path)`` through its path: forced, else the one measured fastest for layers like
    it (``key``: the layer's shape and grids, with the input's row count and dtype), measured on this input the
    first time; ``integer``: whether the layer may take the integer path."""
    forced, choice, measured = _CHOICE.forced, None, False
    if forced is not None:
        path = forced if forced != "integer" or integer else "reference"
    else:
        choice = (key, not integer)
        chosen = _CHOICE.chosen.get(choice)
        if chosen is None:
            paths = EXACT_PATHS if choice[1] else PATHS
            times = {name: _seconds(lambda name=name: compute(name)) for name in paths}
            chosen = _CHOICE.chosen[choice] = _fastest(times), times
            measured = True
        path = chosen[0]
    entry = state(weight)
    entry["key"], entry["choice"] = key, choice  # what ran last, and the measurement that chose it (None: pinned)
    if entry.get("path") != path or measured:
        entry["path"] = path
        # measured, not kept: the weight stays packed in memory (one cached copy at most)
        for cache, user in (("dense", "cached"), ("codes", "integer")):
            if path != user:
                entry.pop(cache, None)
    return compute(path)


def dense(weight, dtype: torch.dtype) -> torch.Tensor:
    """The weight dequantized to ``dtype``, computed once and kept while the weight lives."""
    entry = state(weight)
    cached = entry.get("dense")
    if cached is None or cached.dtype != dtype:
        cached = entry["dense"] = weight.dequantize(dtype)
    return cached


def integer_weight(weight, bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight's signed int8 codes as an ``(out, in)`` matrix and its side of the integer product's rank terms
    (``qsam2_ext.core.int_linear.weight_columns``, with ``bias``), computed once and kept while the weight lives."""
    entry = state(weight)
    cached = entry.get("codes")
    if cached is None or cached[0] is not bias:
        codes = weight.codes().reshape(weight.shape[0], -1).contiguous()
        cached = entry["codes"] = bias, codes, weight_columns(codes, weight.center, weight.step, bias)
    return cached[1], cached[2]


def chosen_paths() -> dict[tuple, tuple[str, dict[str, float]]]:
    """(Layer key, exact paths only) -> (the path measured fastest, seconds of each candidate), as measured so far."""
    return dict(_CHOICE.chosen)


def paths_taken(model: torch.nn.Module) -> dict[str, int]:
    """How many packed layers of ``model`` ran each CPU path (at their last eager call), by path name."""
    counts: dict[str, int] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        path = _STATE.get(id(weight), {}).get("path") if isinstance(weight, torch.Tensor) else None
        if path is not None:
            counts[path] = counts.get(path, 0) + 1
    return dict(sorted(counts.items()))


def kinds_taken(model: torch.nn.Module) -> list[dict]:
    """Per kind of packed layer of ``model`` (op, weight shape, input shape): how many layers, the path they ran at
    their last eager call, and the milliseconds each path took when that path was chosen (empty where pinned)."""
    kinds: dict[tuple, dict] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        entry = _STATE.get(id(weight)) if isinstance(weight, torch.Tensor) else None
        if not entry or "key" not in entry:
            continue
        key = entry["key"]
        kind = kinds.setdefault((key, entry["path"]), {"op": key[0], "input": list(key[1]), "weight": list(key[2]),
                                                       "path": entry["path"], "layers": 0, "ms": {}})
        kind["layers"] += 1
        measured = _CHOICE.chosen.get(entry["choice"])
        if measured is not None:
            kind["ms"] = {p: 1e3 * s for p, s in measured[1].items()}
    return list(kinds.values())
