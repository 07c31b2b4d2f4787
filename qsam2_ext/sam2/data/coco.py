"""COCO instance annotations: one ``instances_*.json`` for a folder of images."""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from typing import Optional

import numpy as np

from .files import choose, decode_segmentation, image_masks, read_rgb
from .sample import BadSample, DatasetError, Sample

log = logging.getLogger(__name__)


class CocoReader:
    """Instances of ``annotation_file`` over the images in ``image_dir``.

    Crowd annotations (``iscrowd: 1``) are not instances and are ignored; images with no other annotation are
    not used (their number is logged).
    """

    format = "coco"
    labeled = True
    video = False

    def __init__(self, image_dir: str, annotation_file: str):
        if not os.path.isdir(image_dir):
            raise DatasetError(f"COCO image folder not found: {image_dir}")
        try:
            with open(annotation_file) as f:
                data = json.load(f)
            images = {int(im["id"]): im for im in data["images"]}
            annotations = defaultdict(list)
            for a in data["annotations"]:
                if not a.get("iscrowd", 0):
                    annotations[int(a["image_id"])].append(a)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"cannot read COCO annotations {annotation_file}: {type(e).__name__}: {e}") from None
        self.image_dir = image_dir
        self.images = [images[i] for i in sorted(images) if annotations.get(i)]
        self.annotations = annotations
        self.problems: list[tuple[str, str]] = []
        unknown = sorted(set(annotations) - set(images))
        if unknown:
            reason = f"annotations refer to {len(unknown)} unknown image ids, e.g. {unknown[0]}"
            self.problems.append((annotation_file, reason))
        if len(self.images) < len(images):
            log.info("%s: %d images without non-crowd annotations are not used", annotation_file,
                     len(images) - len(self.images))
        if not self.images:
            raise DatasetError(f"no image with a (non-crowd) instance annotation in {annotation_file}")

    def __len__(self) -> int:
        return len(self.images)

    def source(self, index: int) -> str:
        """The image file of a record: its ``file_name`` (data from the annotation file) must stay inside the image
        folder the caller passed (no absolute path, no ``..`` out of it)."""
        name = self.images[index].get("file_name")
        if not isinstance(name, str) or not name:
            raise BadSample(f"image id {self.images[index].get('id')}", f"file_name is not a file name: {name!r:.80}")
        root = os.path.realpath(self.image_dir)
        path = os.path.realpath(os.path.join(root, name))
        if os.path.isabs(name) or os.path.commonpath([root, path]) != root:
            raise BadSample(f"image id {self.images[index].get('id')}", f"file_name {name[:80]!r} points outside "
                                                                       f"the image folder {self.image_dir}")
        return os.path.join(self.image_dir, name)

    def load(self, index: int, rng: Optional[np.random.Generator] = None, max_objects: Optional[int] = None) -> Sample:
        info = self.images[index]
        source = self.source(index)
        image = read_rgb(source)
        height, width = image.shape[:2]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            raise BadSample(source, f"annotations say {info.get('width')}x{info.get('height')}, "
                                    f"image is {width}x{height}")
        annotations = self.annotations[int(info["id"])]
        masks, ids = [], []
        for i in choose(len(annotations), max_objects, rng):
            annotation = annotations[i]
            try:
                masks.append(decode_segmentation(annotation["segmentation"], height, width))
            except (KeyError, ValueError, TypeError) as e:
                raise BadSample(source, f"instance {annotation.get('id')}: bad segmentation ({e})") from None
            ids.append(annotation.get("id", i))
        masks, ids, issues = image_masks(source, masks, ids)
        return Sample(source, [image], masks, ids, [source], issues)
