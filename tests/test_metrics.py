"""IoU, DAVIS boundary F and J&F on cases computed by hand."""

import math

import numpy as np
import pytest

from qsam2_ext.sam2.metrics import boundary_f, boundary_map, boundary_tolerance, dataset_jf, mask_iou, sequence_jf


def _cols(h, w, last):
    """Columns 0..last-1 set."""
    m = np.zeros((h, w), bool)
    m[:, :last] = True
    return m


def test_iou_hand_cases():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True  # 16 px
    b[0:4, 2:6] = True  # 16 px, 8 shared
    assert mask_iou(a, b) == pytest.approx(8 / 24)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, np.zeros_like(a)) == 0.0
    assert mask_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0  # DAVIS: both empty
    with pytest.raises(ValueError, match="shape"):
        mask_iou(a, a[:5])


def test_boundary_map_follows_davis_seg2bmap():
    m = np.zeros((4, 5), bool)
    m[1:3, 1:3] = True
    # a pixel is on the boundary if it differs from its right, bottom or bottom-right neighbour
    expected = np.array([
        [1, 1, 1, 0, 0],  # (0,0): its bottom-right (1,1) differs; (0,1), (0,2): bottom differs
        [1, 0, 1, 0, 0],  # (1,0): right differs; (1,1): bottom-right (2,2) is set, so interior; (1,2): right differs
        [1, 1, 1, 0, 0],  # (2,1): bottom differs; (2,2): right and bottom differ
        [0, 0, 0, 0, 0],  # last row: only the right neighbour counts, and row 3 is empty
    ], bool)
    np.testing.assert_array_equal(boundary_map(m), expected)


def test_boundary_tolerance_is_a_fraction_of_the_diagonal():
    assert boundary_tolerance(20, 20) == 1  # ceil(0.008 * 28.3) = ceil(0.23)
    assert boundary_tolerance(480, 854) == math.ceil(0.008 * math.hypot(480, 854)) == 8  # DAVIS 480p
    assert boundary_tolerance(20, 400) == 4  # ceil(0.008 * 400.5) = ceil(3.2)
    assert boundary_tolerance(20, 20, threshold=3) == 3  # thresholds >= 1 are pixels


def test_boundary_f_hand_cases():
    gt = _cols(20, 20, 10)  # boundary: column 9, 20 pixels
    assert boundary_f(gt, gt) == 1.0
    assert boundary_f(np.zeros_like(gt), gt) == 0.0  # precision 1, recall 0
    assert boundary_f(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    # prediction edge 3 px away: beyond the 1 px tolerance of a 20x20 image, within the 4 px of a 20x400 one
    assert boundary_f(_cols(20, 20, 13), gt) == 0.0
    assert boundary_f(_cols(20, 400, 13), _cols(20, 400, 10)) == 1.0
    assert boundary_f(_cols(20, 20, 11), gt) == 1.0  # 1 px away: within tolerance
    # top-left 10x10 block: its boundary is column 9 rows 0-9 plus row 9 cols 0-8 (19 px). Within 1 px (a plus
    # shape) of the ground truth's column 9: the 10 column pixels and (9, 8), so precision 11/19; of the ground
    # truth's 20 pixels, rows 0-9 and (10, 9) are within 1 px of the prediction, so recall 11/20.
    block = np.zeros((20, 20), bool)
    block[:10, :10] = True
    p, r = 11 / 19, 11 / 20
    assert boundary_f(block, gt) == pytest.approx(2 * p * r / (p + r)) == pytest.approx(242 / 429)


def test_sequence_jf_skips_first_and_last_frames():
    gt = np.zeros((4, 2, 20, 20), bool)
    gt[:, 0] = _cols(20, 20, 10)
    gt[:, 1, 5:10, 5:10] = True
    pred = gt.copy()
    pred[0] = False  # frame 0 and frame 3 are never scored
    pred[3] = True
    pred[1, 1] = False  # object 1 missed on frame 1: J 0, F 0
    pred[2, 0] = _cols(20, 20, 20)  # object 0 over the whole image on frame 2: J 0.5, no boundary: F 0
    scores = sequence_jf(pred, gt)
    assert scores["J"] == pytest.approx([(1 + 0.5) / 2, (0 + 1) / 2])
    assert scores["F"] == pytest.approx([(1 + 0) / 2, (0 + 1) / 2])
    assert scores["J_mean"] == pytest.approx(0.625) and scores["F_mean"] == pytest.approx(0.5)
    assert scores["J&F"] == pytest.approx(0.5625)
    with pytest.raises(ValueError, match="3 frames"):
        sequence_jf(pred[:2], gt[:2])


def test_dataset_jf_averages_objects_not_sequences():
    sequences = {"a": {"J": [1.0], "F": [1.0]}, "b": {"J": [0.0, 0.0, 0.0], "F": [0.5, 0.5, 0.5]}}
    out = dataset_jf(sequences)
    assert out["J"] == pytest.approx(0.25) and out["F"] == pytest.approx(0.625)
    assert out["J&F"] == pytest.approx(0.4375) and out["objects"] == 4 and out["sequences"] == 2
