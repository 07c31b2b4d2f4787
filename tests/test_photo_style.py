"""Photo-like rendering: each augmentation does what it says, against NumPy references."""

import numpy as np
import pytest

from qsam2_ext.sam2.photo_style import Look, apply_look, composite, sample_look, shade

IDENTITY = Look(brightness=1.0, contrast=1.0, saturation=1.0, blur=0.0, noise=0.0, jpeg=None)


def _image(seed=0, size=32):
    return np.random.default_rng(seed).integers(40, 200, size=(size, size, 3)).astype(np.uint8)


def test_identity_look_and_single_augmentations():
    image, rng = _image(), np.random.default_rng(0)
    assert np.array_equal(apply_look(image, IDENTITY, rng), image)
    half = apply_look(image, Look(0.5, 1.0, 1.0, 0.0, 0.0, None), rng)
    assert np.abs(half.astype(int) - np.rint(image * 0.5).astype(int)).max() <= 1
    grey = apply_look(image, Look(1.0, 1.0, 0.0, 0.0, 0.0, None), rng)  # saturation 0: every channel the mean
    np.testing.assert_allclose(grey.astype(float), np.repeat(image.mean(-1, keepdims=True), 3, -1), atol=0.51)
    flat = apply_look(image, Look(1.0, 0.0, 1.0, 0.0, 0.0, None), rng)  # contrast 0: the image mean everywhere
    assert np.abs(flat.astype(float) - image.mean()).max() <= 0.51
    blurred = apply_look(image, Look(1.0, 1.0, 1.0, 1.5, 0.0, None), rng)
    assert blurred.std() < image.std()
    noisy = apply_look(image, Look(1.0, 1.0, 1.0, 0.0, 5.0, None), rng)
    assert 4.0 < (noisy.astype(float) - image).std() < 6.0
    jpeg = apply_look(image, Look(1.0, 1.0, 1.0, 0.0, 0.0, 30), rng)
    assert jpeg.shape == image.shape and not np.array_equal(jpeg, image)


def test_sampled_looks_are_in_range_and_seeded():
    looks = [sample_look(np.random.default_rng(i)) for i in range(50)]
    assert all(0.7 <= lk.brightness <= 1.3 and 0.6 <= lk.saturation <= 1.4 for lk in looks)
    assert any(lk.jpeg is None for lk in looks) and any(lk.jpeg is not None for lk in looks)
    assert sample_look(np.random.default_rng(3)) == sample_look(np.random.default_rng(3))


@pytest.mark.parametrize("seed", [0, 1])
def test_composite_keeps_the_object_opaque_inside_its_mask(seed):
    canvas, texture = _image(seed), _image(seed + 10)
    yy, xx = np.mgrid[0:32, 0:32]
    mask = (yy - 16) ** 2 + (xx - 16) ** 2 < 64
    out = canvas.copy()
    composite(out, texture, mask, np.random.default_rng(seed))
    assert np.array_equal(out[mask], texture[mask])  # opaque inside: the mask is exact
    distance = np.hypot(yy - 16, xx - 16) - 8  # pixels outside the disc's edge
    far = distance > 14
    assert np.abs(out[far].astype(int) - canvas[far].astype(int)).max() <= 1  # shadow and feather stay near
    beyond_feather = distance > 3  # the feather (sigma 0.7 px) blends texture in only next to the edge
    assert (out[beyond_feather].astype(int) <= canvas[beyond_feather].astype(int) + 1).all()  # a shadow darkens


def test_shade_only_rescales_brightness():
    texture = np.full((24, 24, 3), 100, np.uint8)
    shaded = shade(texture, np.random.default_rng(0))
    assert shaded.std() > 0 and np.array_equal(shaded[..., 0], shaded[..., 1])
    assert 50 <= shaded.min() and shaded.max() <= 150
