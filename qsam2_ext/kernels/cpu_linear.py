"""The CPU path of a packed layer in eager PyTorch, chosen per kind of layer by measurement.

Outside ``integer_matmul()``, a packed Linear / Conv2d on a CPU runs one of two paths that give the same bits (the
reference's: two models, or a model and its fake-quantized twin, still agree exactly):

* ``"cached"``: the weight dequantized once and kept beside the packed codes (the float weight's memory again:
  speed bought with RAM, released when the weight goes), then the float op, as the float model runs it;
* ``"reference"``: the weight dequantized at every call (memory stays packed).

The first eager call of a layer of each kind (op, input shape and dtype, weight shape, bits, grids) times both
(``REPEATS`` runs each on that input, after one warm-up) and keeps the faster for every layer of that kind (the
per-call dequantization only if clearly faster: ``REFERENCE_MARGIN``).
``paths_taken`` tells which ran (``qsam2 quantize`` reports it); ``cpu_paths(path)`` pins one (``None``: measure).
Inside ``integer_matmul()`` layers take the integer product where this CPU has a fast exact kernel (equal to the
reference up to float rounding only, hence opt-in); traced for ``torch.compile`` nothing here applies: inductor
fuses the reference expression (or the integer product).
"""

from __future__ import annotations

import time
from typing import Callable, ContextManager, Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .path_choice import PathChoice

PATHS = ("cached", "reference")
REPEATS = 3
# the per-call dequantization does strictly more work than the cached weight's product, so it can only win by
# timing noise (or where caching would push the weight out of memory bandwidth's favour): it must be this much
# faster to be kept
REFERENCE_MARGIN = 0.9
# per packed weight, kept off the tensor (whose attributes torch.save would write): {"path": the last path it ran,
# "dense": its cached dequantized weight}; an entry goes with its weight
_STATE: WeakIdKeyDictionary = WeakIdKeyDictionary()
_CHOICE = PathChoice(PATHS)  # chosen: layer key -> (fastest path, seconds of each candidate)


def cpu_paths(path: Optional[str]) -> ContextManager[None]:
    """Run every packed CPU Linear through ``path`` (where it has it; else the reference), or measure (``None``)."""
    return _CHOICE.force(path)


def _seconds(fn: Callable[[], torch.Tensor]) -> float:
    fn()  # warm-up (and, for "cached", the one dequantization)
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def run(weight, key: tuple, candidates: dict[str, Callable[[], torch.Tensor]]) -> torch.Tensor:
    """The layer's output through its path: forced, else the one measured fastest for layers like it (``key``: the
    layer's shape and grids, with the input's row count and dtype), measured on this input the first time."""
    if _CHOICE.forced is not None:
        path = _CHOICE.forced if _CHOICE.forced in candidates else "reference"
    else:
        if key not in _CHOICE.chosen:
            times = {name: _seconds(fn) for name, fn in candidates.items()}
            path = "reference" if times["reference"] < REFERENCE_MARGIN * times["cached"] else "cached"
            _CHOICE.chosen[key] = path, times
        path = _CHOICE.chosen[key][0]
    state = _STATE.setdefault(weight, {})
    state["path"] = path
    if path != "cached":
        state.pop("dense", None)  # measured, not kept: the weight stays packed in memory
    return candidates[path]()


def dense(weight, dtype: torch.dtype) -> torch.Tensor:
    """The weight dequantized to ``dtype``, computed once and kept while the weight lives."""
    state = _STATE.setdefault(weight, {})
    if state.get("dense") is None or state["dense"].dtype != dtype:
        state["dense"] = weight.dequantize(dtype)
    return state["dense"]


def chosen_paths() -> dict[tuple, tuple[str, dict[str, float]]]:
    """Layer key -> (the path measured fastest, seconds of each candidate), as measured so far."""
    return dict(_CHOICE.chosen)


def paths_taken(model: torch.nn.Module) -> dict[str, int]:
    """How many packed layers of ``model`` ran each CPU path (at their last eager call), by path name."""
    counts: dict[str, int] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        path = _STATE.get(weight, {}).get("path") if isinstance(weight, torch.Tensor) else None
        if path is not None:
            counts[path] = counts.get(path, 0) + 1
    return dict(sorted(counts.items()))
