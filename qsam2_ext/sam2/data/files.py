"""Reading images, id maps and COCO-style segmentations; any failure becomes a ``BadSample`` naming the file."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from .sample import BadSample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ImportError("reading images needs Pillow: pip install pillow") from e
    return Image


def pycocotools_mask():
    try:
        from pycocotools import mask
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ImportError("COCO RLE masks need pycocotools: pip install pycocotools") from e
    return mask


ID_MODES = ("P", "L", "I", "I;16")  # indexed (palette) or grayscale: pixel values are the ids themselves


def _open(path: str, convert: Optional[str] = None, modes: Optional[tuple] = None) -> np.ndarray:
    Image = _pil()
    try:
        with Image.open(path) as image:
            if modes is not None and image.mode not in modes:
                raise BadSample(path, f"must be an indexed (palette) or grayscale PNG of ids, not mode {image.mode}")
            image.load()
            return np.array(image.convert(convert) if convert else image)  # a writable copy
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSample(path, f"unreadable image ({type(e).__name__}: {e})") from None


def read_rgb(path: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB (grayscale and palette images are converted)."""
    return _open(path, "RGB")


def read_id_map(path: str) -> np.ndarray:
    """``(H, W)`` integer instance ids from an indexed (palette) or grayscale PNG; 0 is background."""
    return _open(path, modes=ID_MODES).astype(np.int64)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """``(H, W)`` bool mask of a COCO segmentation: polygons, uncompressed RLE or compressed RLE (SA-1B)."""
    mask_utils = pycocotools_mask()
    if isinstance(segmentation, list):  # polygons: one RLE per part, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"not a COCO segmentation: {type(segmentation).__name__}")
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"segmentation is {rle['size'][1]}x{rle['size'][0]} but the image is {width}x{height}")
    return mask_utils.decode(rle).astype(bool)


def image_masks(source: str, masks: Sequence[np.ndarray], ids: Sequence[int]) -> tuple:
    """``(masks (1, K, H, W), ids, issues)``: empty masks are dropped (listed in the issues), and a sample left
    without instances is rejected. (``decode_segmentation`` already checked each mask's size.)"""
    keep, kept_ids, issues = [], [], []
    for mask, object_id in zip(masks, ids):
        if not mask.any():
            issues.append(f"instance {object_id}: empty mask, dropped")
            continue
        keep.append(mask)
        kept_ids.append(object_id)
    if not keep:
        raise BadSample(source, "no non-empty instance mask" + (f" ({len(issues)} empty)" if issues else ""))
    return np.stack(keep)[None], kept_ids, issues


def choose(n: int, limit: Optional[int], rng: Optional[np.random.Generator]) -> list[int]:
    """Indices of at most ``limit`` of ``n`` items: a random subset with ``rng``, else the first ones."""
    if limit is None or n <= limit:
        return list(range(n))
    if rng is None:
        return list(range(limit))
    return sorted(rng.choice(n, size=limit, replace=False).tolist())


def list_images(folder: str, recursive: bool = False) -> list[str]:
    """Image files (by extension) under ``folder``, sorted."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not recursive:
            break
    return found
