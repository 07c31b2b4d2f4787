"""A plain folder of images without labels: for calibration and teacher distillation."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from .files import list_images, read_rgb
from .sample import DatasetError, Sample


class FolderReader:
    """Every image (by extension) under ``root``, searched recursively, in sorted order."""

    format = "folder"
    labeled = False
    video = False

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise DatasetError(f"image folder not found: {root}")
        self.paths = list_images(root, recursive=True)
        self.problems: list[tuple[str, str]] = []
        if not self.paths:
            raise DatasetError(f"no image file in {root}")

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, index: int) -> str:
        return self.paths[index]

    def load(self, index: int, rng: Optional[np.random.Generator] = None, max_objects: Optional[int] = None) -> Sample:
        path = self.paths[index]
        return Sample(path, [read_rgb(path)], None, [], [path])
