"""Which input rows of a layer are real tokens: the calibration statistics' view of model-specific padding.

A model family whose layers see padding rows (SAM2's Hiera window padding: ``qsam2_ext.sam2.hiera``) registers a
*source* by module name, with the module whose presence means such a model can exist (``"sam2"``). Calibration
flows (``VRCConfig`` through torchao, NNCF's VRC) call ``acquire()`` while observers are attached, ``row_mask(layer)``
in their hooks and ``release()`` after: a source module is imported only when its trigger is already loaded, so a
framework adapter never imports model code, and a process without SAM2 never loads the SAM2 layer.

A source module provides ``acquire()``, ``release()`` and ``row_mask(layer) -> Optional[Tensor]``.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Optional

import torch
from torch import nn

_sources: dict[str, str] = {}  # source module name -> trigger module name
_active: list[ModuleType] = []  # sources acquired by the outermost acquire(), in acquisition order
_users = 0
_lock = threading.Lock()


def register_row_mask_source(module: str, trigger: str) -> None:
    """Use ``module``'s row masks while calibrating, whenever ``trigger`` has been imported."""
    _sources[module] = trigger


def acquire() -> None:
    """Start the registered sources whose trigger is loaded (reference counted; pair with ``release``)."""
    global _users
    with _lock:
        if _users == 0:
            for name, trigger in _sources.items():
                if trigger in sys.modules:
                    source = importlib.import_module(name)
                    source.acquire()
                    _active.append(source)
        _users += 1


def release() -> None:
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            while _active:
                _active.pop().release()


def row_mask(layer: nn.Module) -> Optional[torch.Tensor]:
    """The mask over ``layer``'s current input rows from the first source that has one (None: all rows count)."""
    for source in _active:
        mask = source.row_mask(layer)
        if mask is not None:
            return mask
    return None
