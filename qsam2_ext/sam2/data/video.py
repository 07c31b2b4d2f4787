"""DAVIS / SA-V style video folders: ``JPEGImages/<video>/<frame>.jpg`` with ``Annotations/<video>/<frame>.png``.

Annotations are indexed (palette) or grayscale PNGs of instance ids, 0 being background, one per frame.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from .files import choose, read_id_map, read_rgb
from .sample import BadSample, DatasetError, Sample


def frame_order(stems: list[str]) -> list[str]:
    """Numeric order when every name is a number (as SAM2's video predictor sorts), else lexicographic."""
    return sorted(stems, key=int) if all(s.isdigit() for s in stems) else sorted(stems)


def _stems(folder: str, extensions: tuple[str, ...]) -> dict[str, str]:
    return {os.path.splitext(n)[0]: n for n in os.listdir(folder) if n.lower().endswith(extensions)}


class VideoReader:
    """Whole sequences (``clip_length=None``) or clips of ``clip_length`` consecutive frames.

    A clip starts at a random frame (first frame without ``rng``), moved forward to the first frame showing an
    object; its objects are those visible in its first frame. A whole sequence has every object that appears in
    it. Videos whose frames and annotations do not pair up are listed in ``problems`` and not used.
    """

    format = "video"
    labeled = True
    video = True

    def __init__(self, root: str, clip_length: Optional[int] = None):
        images, annotations = os.path.join(root, "JPEGImages"), os.path.join(root, "Annotations")
        for folder in (images, annotations):
            if not os.path.isdir(folder):
                raise DatasetError(f"video dataset needs {folder} (layout: JPEGImages/<video>/<frame>.jpg and "
                                   "Annotations/<video>/<frame>.png)")
        if clip_length is not None and (isinstance(clip_length, bool) or not isinstance(clip_length, int)
                                        or clip_length < 1):
            raise ValueError(f"clip_length must be a positive integer or None, got {clip_length!r}")
        self.root, self.clip_length = root, clip_length
        self.videos: list[tuple[str, list[str], list[str]]] = []  # (name, frame paths, annotation paths)
        self.problems: list[tuple[str, str]] = []
        for name in sorted(os.listdir(images)):
            frame_dir, mask_dir = os.path.join(images, name), os.path.join(annotations, name)
            if not os.path.isdir(frame_dir):
                continue
            if not os.path.isdir(mask_dir):
                self.problems.append((frame_dir, "no annotation folder"))
                continue
            frames, masks = _stems(frame_dir, (".jpg", ".jpeg")), _stems(mask_dir, (".png",))
            if not frames or frames.keys() != masks.keys():
                missing = sorted(frames.keys() ^ masks.keys())
                reason = ("no JPEG frame" if not frames else
                          f"frames and annotations differ ({len(missing)} unpaired, e.g. {missing[0]})")
                self.problems.append((frame_dir, reason))
                continue
            order = frame_order(list(frames))
            self.videos.append((name, [os.path.join(frame_dir, frames[s]) for s in order],
                                [os.path.join(mask_dir, masks[s]) for s in order]))
        if not self.videos:
            raise DatasetError(f"no usable video in {root}")

    def __len__(self) -> int:
        return len(self.videos)

    def name(self, index: int) -> str:
        return self.videos[index][0]

    def source(self, index: int) -> str:
        return os.path.dirname(self.videos[index][1][0])

    def frame_dir(self, index: int) -> str:
        return self.source(index)

    def _clip(self, index: int, rng: Optional[np.random.Generator]) -> tuple[int, int, np.ndarray]:
        """``(start, length, first id map)`` of the clip to load."""
        _, frames, masks = self.videos[index]
        if not self.clip_length:
            return 0, len(frames), read_id_map(masks[0])
        n, length = len(frames), self.clip_length
        if n < length:
            raise BadSample(self.source(index), f"{n} frames, fewer than the clip length {length}")
        start = int(rng.integers(0, n - length + 1)) if rng is not None else 0
        for s in range(start, n - length + 1):
            ids = read_id_map(masks[s])
            if ids.any():
                return s, length, ids
        raise BadSample(self.source(index), f"no object visible in the first frame of any clip from frame {start} on")

    def load(self, index: int, rng: Optional[np.random.Generator] = None, max_objects: Optional[int] = None) -> Sample:
        source = self.source(index)
        _, frame_paths, mask_paths = self.videos[index]
        start, length, first = self._clip(index, rng)
        frame_paths, mask_paths = frame_paths[start:start + length], mask_paths[start:start + length]
        frames = [read_rgb(p) for p in frame_paths]
        id_maps = [first] + [read_id_map(p) for p in mask_paths[1:]]
        height, width = frames[0].shape[:2]
        for path, array in zip(frame_paths + mask_paths, frames + id_maps):
            if array.shape[:2] != (height, width):
                raise BadSample(path, f"is {array.shape[1]}x{array.shape[0]}, the video's first frame {width}x{height}")
        ids = np.stack(id_maps)
        present = np.unique(ids[0] if self.clip_length else ids)
        present = [int(i) for i in present if i != 0]
        if not present:
            raise BadSample(source, "no annotated object")
        chosen = [present[i] for i in choose(len(present), max_objects, rng)]
        masks = np.stack([ids == i for i in chosen], axis=1)  # (T, K, H, W)
        return Sample(source, frames, masks, chosen, frame_paths)
