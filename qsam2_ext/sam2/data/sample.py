"""The one sample type every reader returns, and the errors a reader raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


class DatasetError(ValueError):
    """The dataset as a whole cannot be used (missing folder, malformed index file): raised before any work."""


class BadSample(Exception):
    """One sample cannot be used (unreadable file, size mismatch, no usable instance); ``source`` names its path."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass
class Sample:
    """``T`` frames (``T == 1`` for an image) and, when labeled, ``K`` instance masks per frame.

    ``masks`` is ``(T, K, H, W)`` bool, or None for unlabeled data. ``issues`` lists problems that did not make the
    sample unusable (an empty instance mask that was dropped); the consumer reports them with ``source``.
    """

    source: str
    frames: list[np.ndarray]
    masks: Optional[np.ndarray]
    object_ids: list[int]
    frame_paths: list[str]
    issues: list[str] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        return self.masks is not None

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def num_objects(self) -> int:
        return 0 if self.masks is None else self.masks.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the frames."""
        return self.frames[0].shape[:2]
