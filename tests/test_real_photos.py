"""The real-photo evaluation set: the checks docs/real-photos.md documents for each mask."""

import numpy as np
import pytest

pytest.importorskip("skimage")

from qsam2_ext.sam2 import real_photos  # noqa: E402


def test_coins_are_24_compact_disjoint_instances():
    from skimage.measure import label, regionprops

    photo = real_photos.coins()
    assert photo.masks.shape == (24,) + photo.image.shape[:2] and photo.image.dtype == np.uint8
    assert photo.masks.sum(0).max() == 1  # disjoint
    for mask in photo.masks:
        assert label(mask).max() == 1  # one piece
        assert regionprops(mask.astype(np.uint8))[0].solidity >= 0.9  # a coin is a filled disc, not a fragment
        assert 1000 <= mask.sum() <= 3500  # the coins' sizes in this 303x384 photo


def test_motorcycle_mask_is_one_object_standing_on_the_floor():
    from skimage.measure import label

    photo = real_photos.motorcycle()
    (mask,) = photo.masks
    assert label(mask).max() == 1
    assert 0.2 <= mask.mean() <= 0.3
    # the tyres touch the floor at about rows 400 (rear, x 100-300) and 451 (front, x 480-700) of the photo
    assert abs(np.flatnonzero(mask[:, 100:300].any(1)).max() - 400) <= 10
    assert abs(np.flatnonzero(mask[:, 480:700].any(1)).max() - 451) <= 10


def test_the_set_is_deterministic():
    a, b = real_photos.real_photos(), real_photos.real_photos()
    assert [p.name for p in a] == list(real_photos.EVAL_PHOTOS)
    assert all(np.array_equal(x.masks, y.masks) and np.array_equal(x.image, y.image) for x, y in zip(a, b))
