"""Segmentation metrics: IoU (mIoU per instance; J for video) and DAVIS's boundary F-measure and J&F.

Conventions follow the DAVIS 2017 semi-supervised evaluation (Perazzi et al. 2016, Pont-Tuset et al. 2017):

* J is the region IoU; two empty masks score 1.
* F matches 1-pixel boundaries (a pixel differing from its right, bottom or bottom-right neighbour) within a
  tolerance of ``ceil(0.008 * image diagonal)`` pixels (a disk); empty boundaries score precision or recall 1.
* A sequence is scored on its frames except the first (the prompted one) and the last; per object, J and F are
  the means over those frames. The dataset's J, F and J&F are means over all objects of all sequences.
"""

from __future__ import annotations

import math

import numpy as np

BOUNDARY_THRESHOLD = 0.008  # fraction of the image diagonal (DAVIS)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region IoU of two boolean masks; 1 when both are empty."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {gt.shape}")
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Pixels whose value differs from their right, bottom or bottom-right neighbour (DAVIS ``seg2bmap``).

    On the last row only the right neighbour counts, on the last column only the bottom one.
    """
    mask = np.asarray(mask, bool)
    right, below, diagonal = (np.zeros_like(mask) for _ in range(3))
    right[:, :-1] = mask[:, 1:]
    below[:-1, :] = mask[1:, :]
    diagonal[:-1, :-1] = mask[1:, 1:]
    boundary = (mask ^ right) | (mask ^ below) | (mask ^ diagonal)
    boundary[-1, :] = mask[-1, :] ^ right[-1, :]
    boundary[:, -1] = mask[:, -1] ^ below[:, -1]
    boundary[-1, -1] = False
    return boundary


def boundary_tolerance(height: int, width: int, threshold: float = BOUNDARY_THRESHOLD) -> int:
    """Boundary match radius in pixels: ``threshold`` itself if >= 1, else that fraction of the diagonal, rounded up."""
    return int(threshold) if threshold >= 1 else math.ceil(threshold * math.hypot(height, width))


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def boundary_f(pred: np.ndarray, gt: np.ndarray, threshold: float = BOUNDARY_THRESHOLD) -> float:
    """DAVIS boundary F-measure of two boolean masks."""
    from scipy.ndimage import binary_dilation

    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {gt.shape}")
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 or n_gt == 0:
        precision = 1.0 if n_pred == 0 else 0.0
        recall = 1.0 if n_gt == 0 else 0.0
    else:
        disk = _disk(boundary_tolerance(*pred.shape, threshold))
        precision = float((pred_b & binary_dilation(gt_b, disk)).sum() / n_pred)
        recall = float((gt_b & binary_dilation(pred_b, disk)).sum() / n_gt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def sequence_jf(pred: np.ndarray, gt: np.ndarray, threshold: float = BOUNDARY_THRESHOLD) -> dict:
    """Per-object J and F of one sequence, from ``(T, K, H, W)`` boolean predictions and ground truth.

    Returns ``{"J": [K], "F": [K]}`` (means over frames 1 .. T-2) and the sequence means ``"J_mean"``,
    ``"F_mean"``, ``"J&F"`` over its objects.
    """
    if pred.shape != gt.shape or pred.ndim != 4:
        raise ValueError(f"need (T, K, H, W) masks of one shape, got {pred.shape} and {gt.shape}")
    if pred.shape[0] < 3:
        raise ValueError(f"J&F skips the first and last frames: a sequence needs 3 frames or more, got {pred.shape[0]}")
    frames = range(1, pred.shape[0] - 1)
    j = [float(np.mean([mask_iou(pred[t, k], gt[t, k]) for t in frames])) for k in range(pred.shape[1])]
    f = [float(np.mean([boundary_f(pred[t, k], gt[t, k], threshold) for t in frames])) for k in range(pred.shape[1])]
    j_mean, f_mean = float(np.mean(j)), float(np.mean(f))
    return {"J": j, "F": f, "J_mean": j_mean, "F_mean": f_mean, "J&F": (j_mean + f_mean) / 2}


def dataset_jf(sequences: dict[str, dict]) -> dict:
    """J, F and J&F over all objects of all sequences (DAVIS's dataset means)."""
    j = [v for s in sequences.values() for v in s["J"]]
    f = [v for s in sequences.values() for v in s["F"]]
    if not j:
        raise ValueError("no object to average")
    j_mean, f_mean = float(np.mean(j)), float(np.mean(f))
    return {"J": j_mean, "F": f_mean, "J&F": (j_mean + f_mean) / 2, "objects": len(j), "sequences": len(sequences)}
