"""Prompts from masks, as SAM2 trains and evaluates: points, jittered boxes and correction clicks.

Coordinates are ``(x, y)`` pixel indices in the mask's own frame. Labels follow SAM2's prompt encoder:
1 positive point, 0 negative point, 2/3 the top-left/bottom-right box corners, -1 padding.
"""

from __future__ import annotations

import numpy as np

POSITIVE, NEGATIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT, PADDING = 1, 0, 2, 3, -1


def _pick(region: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` pixels of ``region`` drawn uniformly (with replacement), as ``(n, 2)`` float ``(x, y)``."""
    flat = np.flatnonzero(region)
    y, x = np.divmod(rng.choice(flat, size=n), region.shape[1])
    return np.stack([x, y], axis=-1).astype(np.float32)


def sample_points(mask: np.ndarray, positives: int, negatives: int, rng: np.random.Generator):
    """Uniform positive points inside ``mask`` and negative points outside it: ``(coords (P, 2), labels (P,))``.

    Negatives that cannot be drawn (the mask covers the image) become padding.
    """
    coords = [_pick(mask, positives, rng)]
    labels = [np.full(positives, POSITIVE)]
    if negatives:
        if (~mask).any():
            coords.append(_pick(~mask, negatives, rng))
            labels.append(np.full(negatives, NEGATIVE))
        else:
            coords.append(np.zeros((negatives, 2), np.float32))
            labels.append(np.full(negatives, PADDING))
    return np.concatenate(coords), np.concatenate(labels).astype(np.int32)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """``[x0, y0, x1, y1]`` of the mask's pixels (inclusive pixel indices)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, noise: float = 0.1, noise_bound: float = 20.0):
    """SAM2's training box: the tight box with each side moved uniformly by up to ``min(noise * side, bound)``
    pixels, kept inside the image. Returned as corner points ``(coords (2, 2), labels [2, 3])``."""
    x0, y0, x1, y1 = tight_box(mask)
    jitter_x = min(noise * (x1 - x0), noise_bound)
    jitter_y = min(noise * (y1 - y0), noise_bound)
    box = np.array([x0, y0, x1, y1]) + rng.uniform(-1, 1, 4) * np.array([jitter_x, jitter_y, jitter_x, jitter_y])
    height, width = mask.shape
    box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
    (x0, x1), (y0, y1) = np.sort(box[[0, 2]]), np.sort(box[[1, 3]])  # jitter may cross the sides of thin boxes
    coords = np.array([[x0, y0], [x1, y1]], np.float32)
    return coords, np.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], np.int32)


def correction_click(gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator):
    """One click on the prediction's error, as SAM2's iterative training samples it: a uniform pixel of
    ``gt XOR pred``, positive where the object was missed, negative where it was wrongly added.

    Without an error the click confirms the object (a positive inside ``gt``), or the background if ``gt`` is empty.
    Returns ``((x, y) float32 (2,), label)``.
    """
    error = gt != pred
    region = error if error.any() else (gt if gt.any() else np.ones_like(gt))
    xy = _pick(region, 1, rng)[0]
    return xy, int(POSITIVE if gt[int(xy[1]), int(xy[0])] else NEGATIVE)


def center_point(mask: np.ndarray) -> np.ndarray:
    """The mask pixel farthest from its boundary (the image border counts as boundary): SAM's evaluation click."""
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(distance), mask.shape)
    return np.array([x, y], np.float32)


def grid_points(height: int, width: int, per_side: int) -> np.ndarray:
    """``per_side**2`` points at the centres of a regular grid over the image, ``(n, 2)`` ``(x, y)``."""
    xs = (np.arange(per_side) + 0.5) * width / per_side
    ys = (np.arange(per_side) + 0.5) * height / per_side
    return np.stack(np.meshgrid(np.floor(xs), np.floor(ys)), axis=-1).reshape(-1, 2).astype(np.float32)
