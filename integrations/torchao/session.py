"""All-or-nothing conversion across the layers one ``prepare`` call touched.

torchao's ``quantize_`` calls our handler layer by layer, so a layer that cannot be converted would be found only
after earlier layers were already changed. Each prepare call (one config object) therefore records the layers it
prepared in a ``Session``; the first convert of any of them checks them all, and raises before touching any.
"""

from __future__ import annotations

import weakref
from typing import Callable

from torch import nn


class Session:
    def __init__(self):
        self._layers: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
        self._checked = False

    def add(self, layer: nn.Module) -> None:
        self._layers.add(layer)
        self._checked = False

    def discard(self, layer: nn.Module) -> None:
        self._layers.discard(layer)

    def check_all(self, check: Callable[[nn.Module], None]) -> None:
        """Run ``check`` on every layer still in the session (once); raise one error naming all failures."""
        if self._checked:
            return
        errors = []
        for layer in list(self._layers):
            try:
                check(layer)
            except (RuntimeError, ValueError) as e:
                errors.append(str(e))
        if errors:
            raise RuntimeError(
                f"cannot convert: {len(errors)} prepared layer(s) are not ready, nothing was changed:\n  "
                + "\n  ".join(errors)
            )
        self._checked = True


_sessions: dict[int, Session] = {}


def session_for(config) -> Session:
    """The session of one config object (kept while the config lives)."""
    key = id(config)
    if key not in _sessions:
        _sessions[key] = Session()
        weakref.finalize(config, _sessions.pop, key, None)
    return _sessions[key]


def describe(layer: nn.Module) -> str:
    """A name for a layer when torchao does not tell us its fully qualified name."""
    w = layer.weight
    return f"{type(layer).__name__}({w.shape[1] if w.ndim > 1 else '?'}->{w.shape[0]}, id {id(layer):#x})"
