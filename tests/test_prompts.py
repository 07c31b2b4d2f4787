"""Prompt sampling against the masks it is drawn from."""

import numpy as np
import pytest

from qsam2_ext.sam2.prompts import (
    BOX_BOTTOM_RIGHT,
    BOX_TOP_LEFT,
    NEGATIVE,
    PADDING,
    POSITIVE,
    center_point,
    correction_click,
    grid_points,
    jittered_box,
    sample_points,
    tight_box,
)


def _mask():
    mask = np.zeros((40, 60), bool)
    mask[10:20, 15:45] = True
    return mask


def test_points_fall_inside_and_outside():
    mask, rng = _mask(), np.random.default_rng(0)
    coords, labels = sample_points(mask, 5, 3, rng)
    assert coords.shape == (8, 2) and labels.tolist() == [POSITIVE] * 5 + [NEGATIVE] * 3
    x, y = coords[:, 0].astype(int), coords[:, 1].astype(int)
    assert mask[y[:5], x[:5]].all() and not mask[y[5:], x[5:]].any()


def test_negatives_become_padding_when_the_mask_fills_the_image():
    coords, labels = sample_points(np.ones((4, 4), bool), 1, 2, np.random.default_rng(0))
    assert labels.tolist() == [POSITIVE, PADDING, PADDING]


def test_points_are_uniform_over_the_mask():
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = mask[9, 9] = True
    coords, _ = sample_points(mask, 4000, 0, np.random.default_rng(1))
    share = float((coords[:, 0] == 0).mean())
    assert abs(share - 0.5) < 0.03  # two pixels, equally likely (binomial sd 0.008)


def test_tight_box_and_jitter_bounds():
    mask = _mask()
    np.testing.assert_array_equal(tight_box(mask), [15, 10, 44, 19])
    rng = np.random.default_rng(0)
    for _ in range(200):
        coords, labels = jittered_box(mask, rng, noise=0.1, noise_bound=2.0)
        assert labels.tolist() == [BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]
        (x0, y0), (x1, y1) = coords
        # each side moves by at most min(0.1 * side, 2): 2 px in x (side 29), 0.9 px in y (side 9)
        assert abs(x0 - 15) <= 2 and abs(x1 - 44) <= 2 and abs(y0 - 10) <= 0.9 + 1e-6 and abs(y1 - 19) <= 0.9 + 1e-6
    coords, _ = jittered_box(np.ones((8, 8), bool), rng, noise=0.5, noise_bound=100)
    assert coords.min() >= 0 and coords.max() <= 7  # clipped to the image


def test_no_jitter_gives_the_tight_box():
    coords, _ = jittered_box(_mask(), np.random.default_rng(0), noise=0.0)
    np.testing.assert_array_equal(coords, [[15, 10], [44, 19]])


@pytest.mark.parametrize("case", ["missed", "added", "correct", "absent"])
def test_correction_click_targets_the_error(case):
    gt, pred = _mask(), _mask()
    if case == "missed":
        pred[10:20, 30:45] = False  # right half missed: a positive click there
    elif case == "added":
        pred[30:35, 0:5] = True  # spurious blob: a negative click on it
    elif case == "absent":
        gt[:], pred[:] = False, False
    rng = np.random.default_rng(0)
    for _ in range(50):
        (x, y), label = correction_click(gt, pred, rng)
        x, y = int(x), int(y)
        if case == "missed":
            assert label == POSITIVE and 30 <= x < 45 and 10 <= y < 20
        elif case == "added":
            assert label == NEGATIVE and 0 <= x < 5 and 30 <= y < 35
        elif case == "correct":
            assert label == POSITIVE and gt[y, x]
        else:
            assert label == NEGATIVE


def test_center_point_is_the_innermost_pixel():
    mask = np.zeros((21, 31), bool)
    mask[5:16, 3:28] = True  # 11 rows: the middle row 10 is farthest from the boundary
    x, y = center_point(mask)
    assert y == 10 and 8 <= x <= 22
    lshape = np.zeros((30, 30), bool)
    lshape[0:30, 0:6] = True
    lshape[24:30, 0:30] = True
    x, y = center_point(lshape)
    assert lshape[int(y), int(x)]  # inside even for a non-convex mask, unlike the centroid


def test_grid_points_cover_the_image():
    points = grid_points(40, 80, 2)
    np.testing.assert_array_equal(points, [[20, 10], [60, 10], [20, 30], [60, 30]])
