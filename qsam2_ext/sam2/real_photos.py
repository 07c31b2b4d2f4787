"""A small evaluation set of real photographs with instance masks, built from data scikit-image ships.

Real photographs that come with masks are scarce; these are evaluation-only and must never be trained on
(``EVAL_PHOTOS`` names the photos that training data has to exclude). Masks are derived by code, deterministically,
from the shipped files, and each derivation carries a check a human can verify (docs/real-photos.md):

* ``coins``: 24 Greek coins from Pompeii (Brooklyn Museum, no known copyright restrictions). Masks: scikit-image's
  own region-based segmentation of this image (Sobel elevation map, background/coin markers, watershed, holes
  filled), keeping components of 200 px or more. Check: exactly 24 components, each compact (solidity ≥ 0.9).
* ``motorcycle``: the left view of Middlebury 2014's "Motorcycle" stereo pair (down-sampled 4x, shipped by
  scikit-image with its structured-light ground-truth disparity). Mask: pixels nearer than the bench and
  wall behind (disparity > 42 px) that rise above the floor plane (a robust plane fit of disparity over the lower
  image, + 2 px), opened, the largest component, closed, small holes (< 200 px, missing disparity) filled.
  Check: one component of 20-30 % of the image, both wheels' lowest points within 10 px of the floor contact rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EVAL_PHOTOS = ("coins", "motorcycle")  # never in training data
MIN_AREA = 200


@dataclass(frozen=True)
class RealPhoto:
    name: str
    image: np.ndarray  # uint8 (H, W, 3)
    masks: np.ndarray  # bool (K, H, W), one per instance
    source: str


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3])


def coins() -> RealPhoto:
    import skimage.data
    from scipy import ndimage as ndi
    from skimage.filters import sobel
    from skimage.measure import regionprops
    from skimage.segmentation import watershed

    image = skimage.data.coins()
    markers = np.zeros(image.shape, np.int32)
    markers[image < 30], markers[image > 150] = 1, 2  # sure background, sure coin
    labels, _ = ndi.label(ndi.binary_fill_holes(watershed(sobel(image), markers) == 2))
    regions = [r for r in regionprops(labels) if r.area >= MIN_AREA]
    regions.sort(key=lambda r: (round(r.centroid[0] / 60), r.centroid[1]))  # row by row, left to right
    masks = np.stack([labels == r.label for r in regions])
    return RealPhoto("coins", _rgb(image), masks, "skimage.data.coins (Brooklyn Museum; no known copyright restrictions)")


def _floor_plane(disparity: np.ndarray, valid: np.ndarray, first_row: int = 300) -> np.ndarray:
    """Disparity of the floor at every pixel: a plane ``a·x + b·y + c`` fitted to the rows below ``first_row``,
    refitting on the inliers (objects standing on the floor are nearer, so they fall out as outliers)."""
    height, width = disparity.shape
    yy, xx = np.mgrid[0:height, 0:width]
    pick = valid & (yy > first_row)
    a = np.stack([xx[pick], yy[pick], np.ones(pick.sum())], 1).astype(np.float64)
    b = disparity[pick].astype(np.float64)
    keep = np.ones(len(b), bool)
    for _ in range(10):
        coefficients = np.linalg.lstsq(a[keep], b[keep], rcond=None)[0]
        residual = np.abs(b - a @ coefficients)
        keep = residual < max(0.5, 2.5 * float(np.median(residual[keep])))
    return coefficients[0] * xx + coefficients[1] * yy + coefficients[2]


def motorcycle() -> RealPhoto:
    import skimage.data
    from scipy import ndimage as ndi

    image, _, disparity = skimage.data.stereo_motorcycle()
    valid = np.isfinite(disparity)
    near = np.where(valid, disparity, 0) > 42.0
    mask = valid & near & (np.where(valid, disparity, 0) > _floor_plane(disparity, valid) + 2.0)
    labels, _ = ndi.label(ndi.binary_opening(mask))
    mask = ndi.binary_closing(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1, iterations=2)
    holes, _ = ndi.label(~mask)
    sizes = np.bincount(holes.ravel())
    small = np.flatnonzero(sizes < MIN_AREA)
    mask |= np.isin(holes, small[small > 0])
    return RealPhoto("motorcycle", _rgb(image), mask[None],
                     "skimage.data.stereo_motorcycle (Middlebury 2014 stereo, Scharstein et al. 2014)")


def real_photos() -> list[RealPhoto]:
    """The evaluation set, in a fixed order."""
    return [coins(), motorcycle()]


def filled_box(box: np.ndarray, shape) -> np.ndarray:
    """The inclusive pixel box ``[x0, y0, x1, y1]`` as a mask."""
    mask = np.zeros(shape, bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def score(predictor, photos: list[RealPhoto]) -> list[dict]:
    """Per-instance IoU of a model (a ``SAM2ImagePredictor``) or, for ``None``, of the filled-prompt-box baseline.
    Prompts are the evaluation's (``qsam2_ext.evaluate``): the innermost point (multimask, best predicted IoU kept)
    and the tight box."""
    import torch

    from qsam2_ext.evaluate import predict_masks

    from .metrics import mask_iou
    from .prompts import center_point, tight_box

    records = []
    for photo in photos:
        boxes = np.stack([tight_box(m) for m in photo.masks])
        if predictor is None:
            predictions = {"box": np.stack([filled_box(b, photo.masks.shape[1:]) for b in boxes])}
        else:
            points = np.stack([center_point(m) for m in photo.masks])
            with torch.no_grad():
                predictor.set_image(photo.image)
                predictions = {"point": predict_masks(predictor, "point", points),
                               "box": predict_masks(predictor, "box", boxes)}
        for kind, masks in predictions.items():
            records += [{"photo": photo.name, "instance": i, "prompt": kind, "iou": mask_iou(p, g)}
                        for i, (p, g) in enumerate(zip(masks, photo.masks))]
    return records


def summarise(records: list[dict]) -> dict:
    """mIoU per prompt kind over all instances, and per photo."""
    out = {}
    for kind in ("point", "box"):
        chosen = [r for r in records if r["prompt"] == kind]
        if not chosen:
            continue
        per_photo = {name: float(np.mean([r["iou"] for r in chosen if r["photo"] == name]))
                     for name in dict.fromkeys(r["photo"] for r in chosen)}
        out[kind] = {"mIoU": float(np.mean([r["iou"] for r in chosen])), "instances": len(chosen),
                     "per_photo": per_photo}
    return out
