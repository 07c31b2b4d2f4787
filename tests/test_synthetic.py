"""The generated dataset: deterministic, exact visible masks, standard layouts that SAM2 tooling reads."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from qsam2_ext.sam2.synthetic import MIN_VISIBLE_PIXELS, render_clip, render_scene, write_image_split, write_video_split


@pytest.fixture(scope="module")
def photos():
    from qsam2_ext.sam2.synthetic import _photos

    return _photos()


def test_scenes_are_a_function_of_seed_and_index_only(photos):
    a_img, a_masks = render_scene(7, 3, 128, photos)
    render_scene(7, 0, 128, photos)  # generating others in between changes nothing
    b_img, b_masks = render_scene(7, 3, 128, photos)
    assert np.array_equal(a_img, b_img) and all(np.array_equal(x, y) for x, y in zip(a_masks, b_masks))
    c_img, _ = render_scene(8, 3, 128, photos)
    assert not np.array_equal(a_img, c_img)


def test_visible_masks_are_disjoint_and_large_enough(photos):
    for index in range(6):
        image, masks = render_scene(1, index, 128, photos)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and 1 <= len(masks) <= 4
        stack = np.stack(masks)
        assert stack.sum(0).max() <= 1  # paint order: each pixel belongs to at most one instance
        assert all(m.sum() >= MIN_VISIBLE_PIXELS for m in masks)


def test_clips_move_objects_with_known_motion(photos):
    images, ids = render_clip(3, 1, frames=6, size=128, photos=photos)
    assert len(images) == len(ids) == 6 and all(i.shape == (128, 128) for i in ids)
    present = [np.unique(i[i > 0]) for i in ids]
    first = int(present[0][0])
    centroids = [np.argwhere(i == first).mean(0) for i in ids if (i == first).sum()]
    assert len(centroids) >= 2 and np.abs(np.diff(centroids, axis=0)).sum() > 0  # it moves
    again, _ = render_clip(3, 1, frames=6, size=128, photos=photos)
    assert all(np.array_equal(x, y) for x, y in zip(images, again))


def test_written_layouts_decode_to_the_rendered_masks(tmp_path, photos):
    from pycocotools import mask as mask_utils

    root = write_image_split(str(tmp_path / "images"), 3, seed=5, size=96)
    for index in range(3):
        record = json.loads((tmp_path / "images" / f"synth_{index:06d}.json").read_text())
        _, masks = render_scene(5, index, 96)
        decoded = [mask_utils.decode(a["segmentation"]).astype(bool) for a in record["annotations"]]
        assert len(decoded) == len(masks) and all(np.array_equal(d, m) for d, m in zip(decoded, masks))
        assert Image.open(f"{root}/{record['image']['file_name']}").size == (96, 96)

    write_video_split(str(tmp_path / "video"), 1, seed=5, frames=3, size=96)
    _, ids = render_clip(5, 0, frames=3, size=96)
    for t in range(3):
        png = np.asarray(Image.open(tmp_path / "video" / "Annotations" / "clip_00000" / f"{t:05d}.png"))
        assert np.array_equal(png, ids[t])
        assert (tmp_path / "video" / "JPEGImages" / "clip_00000" / f"{t:05d}.jpg").exists()


def test_split_written_in_parts_equals_one_writer_and_is_reused(tmp_path):
    from qsam2_ext.sam2.synthetic import write_split

    one = write_split("images", str(tmp_path / "one"), 5, seed=3)
    parts = write_split("images", str(tmp_path / "parts"), 5, seed=3, processes=2)
    names = sorted(os.listdir(one))
    assert names == sorted(os.listdir(parts)) and len(names) == 10
    for name in names:
        with open(os.path.join(one, name), "rb") as a, open(os.path.join(parts, name), "rb") as b:
            assert a.read() == b.read()
    assert not os.path.exists(one + ".partial")
    assert write_split("images", one, 99, seed=4) == one and len(os.listdir(one)) == 10  # reused as it is
    with pytest.raises(ValueError, match="kind"):
        write_split("videos", str(tmp_path / "x"), 1, seed=0)


def test_photo_style_is_deterministic_keeps_exact_masks_and_leaves_out_the_evaluation_photos():
    from qsam2_ext.sam2.images import PHOTOS, load_photo
    from qsam2_ext.sam2.real_photos import EVAL_PHOTOS
    from qsam2_ext.sam2.synthetic import _photos

    photos = _photos("photo")
    assert len(photos) == len([n for n in PHOTOS if n not in EVAL_PHOTOS]) == len(PHOTOS) - 1  # coins left out
    coins = load_photo("coins")
    assert not any(p.shape == coins.shape and np.array_equal(p, coins) for p in photos)
    a_img, a_masks = render_scene(4, 2, 128, photos, style="photo")
    b_img, b_masks = render_scene(4, 2, 128, style="photo")
    assert np.array_equal(a_img, b_img) and all(np.array_equal(x, y) for x, y in zip(a_masks, b_masks))
    plain_img, _ = render_scene(4, 2, 128, photos)  # same pool, v1 rendering: the photo look changes pixels
    assert not np.array_equal(a_img, plain_img)
    assert np.stack(a_masks).sum(0).max() <= 1 and all(m.sum() >= MIN_VISIBLE_PIXELS for m in a_masks)
    images, ids = render_clip(4, 1, frames=3, size=96, style="photo")
    assert len(images) == 3 and images[0].dtype == np.uint8 and ids[0].dtype == np.uint8
    with pytest.raises(ValueError, match="style"):
        render_scene(4, 2, 64, style="cartoon")
