"""Dataset readers (SA-1B, COCO, DAVIS/SA-V video folders, plain image folders) and the bad-sample policy.

Every reader has ``len()``, ``source(i)`` (the path reports name), ``load(i, rng=None, max_objects=None)`` returning
a ``Sample`` or raising ``BadSample``, ``labeled``/``video`` flags and ``problems`` found while indexing.
"""

from __future__ import annotations

from typing import Optional

from .coco import CocoReader
from .folder import FolderReader
from .policy import POLICIES, BadSampleLog
from .sa1b import SA1BReader
from .sample import BadSample, DatasetError, Sample
from .video import VideoReader

FORMATS = ("sa1b", "coco", "video", "folder")


def open_dataset(format: str, root: str, *, annotations: Optional[str] = None, clip_length: Optional[int] = None):
    """A reader for ``root`` in ``format``; COCO needs its ``annotations`` JSON, video may read clips."""
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; choose one of {FORMATS}")
    if (annotations is not None) != (format == "coco"):
        raise ValueError("an annotations file is needed for, and only for, the coco format")
    if clip_length not in (None, 1) and format != "video":
        raise ValueError(f"clips of {clip_length} frames need a video dataset, not {format}")
    if format == "coco":
        return CocoReader(root, annotations)
    if format == "video":
        return VideoReader(root, clip_length)
    return SA1BReader(root) if format == "sa1b" else FolderReader(root)


__all__ = [
    "BadSample", "BadSampleLog", "CocoReader", "DatasetError", "FORMATS", "FolderReader", "POLICIES",
    "SA1BReader", "Sample", "VideoReader", "open_dataset",
]
