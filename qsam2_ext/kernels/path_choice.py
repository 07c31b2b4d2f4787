"""Which implementation a kind of layer runs: pinned by the caller, else measured once per key and kept.

The CUDA op (``linear_op``), the FP8 A4 path (``fp8_linear``) and the CPU path (``cpu_linear``) each hold one
``PathChoice``: its ``paths``, the path a caller pinned (``forced``) and the measured choice per key (``chosen``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional


class PathChoice:
    def __init__(self, paths: tuple[str, ...]):
        self.paths = paths
        self.forced: Optional[str] = None
        self.chosen: dict[tuple, Any] = {}

    @contextlib.contextmanager
    def force(self, path: Optional[str]) -> Iterator[None]:
        """Pin ``path`` (one of ``paths``) inside the block, or measure again (``None``)."""
        if path is not None and path not in self.paths:
            raise ValueError(f"path must be one of {self.paths} or None, got {path!r}")
        previous, self.forced = self.forced, path
        try:
            yield
        finally:
            self.forced = previous
