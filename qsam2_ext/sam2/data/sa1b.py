"""SA-1B layout: a folder of ``<name>.jpg`` images, each with a ``<name>.json`` of COCO-RLE instance masks."""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from .files import choose, decode_segmentation, image_masks, read_rgb
from .sample import BadSample, DatasetError, Sample


class SA1BReader:
    """``{"image": {"height", "width"}, "annotations": [{"id", "segmentation": RLE}, ...]}`` per image, paired
    with the image of the same name.

    Images without a JSON (and JSONs without an image) are listed in ``problems`` and not used.
    """

    format = "sa1b"
    labeled = True
    video = False

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise DatasetError(f"SA-1B folder not found: {root}")
        names = os.listdir(root)
        images = {os.path.splitext(n)[0]: n for n in names if n.lower().endswith((".jpg", ".jpeg"))}
        stems, jsons = set(images), {os.path.splitext(n)[0] for n in names if n.endswith(".json")}
        self.root = root
        self.stems = sorted(stems & jsons)
        self.images = {s: os.path.join(root, images[s]) for s in self.stems}
        self.problems = [(os.path.join(root, s + ".json"), "annotation without image") for s in sorted(jsons - stems)]
        self.problems += [(os.path.join(root, images[s]), "image without annotation JSON")
                          for s in sorted(stems - jsons)]
        if not self.stems:
            raise DatasetError(f"no image with a matching annotation JSON in {root} "
                               "(SA-1B layout: sa_1.jpg + sa_1.json)")

    def __len__(self) -> int:
        return len(self.stems)

    def source(self, index: int) -> str:
        return os.path.join(self.root, self.stems[index] + ".json")

    def load(self, index: int, rng: Optional[np.random.Generator] = None, max_objects: Optional[int] = None) -> Sample:
        source = self.source(index)
        try:
            with open(source) as f:
                record = json.load(f)
            info, annotations = record["image"], record["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BadSample(source, f"unreadable annotation JSON ({type(e).__name__}: {e})") from None
        image_path = self.images[self.stems[index]]
        image = read_rgb(image_path)
        height, width = image.shape[:2]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            raise BadSample(source, f"JSON says {info.get('width')}x{info.get('height')}, image is {width}x{height}")
        chosen = [annotations[i] for i in choose(len(annotations), max_objects, rng)]
        masks, ids = [], []
        for k, annotation in enumerate(chosen):
            object_id = annotation.get("id", k)
            try:
                masks.append(decode_segmentation(annotation["segmentation"], height, width))
            except (KeyError, ValueError, TypeError) as e:
                raise BadSample(source, f"instance {object_id}: bad segmentation ({e})") from None
            ids.append(object_id)
        masks, ids, issues = image_masks(source, masks, ids)
        return Sample(source, [image], masks, ids, [image_path], issues)
