"""A deterministic segmentation dataset generated from real photographs, with exact masks.

Scenes are real backgrounds (crops of scikit-image's bundled photos) with 1-4 objects pasted on top. An object
is a procedural shape (ellipse, star polygon, smooth random blob) filled with a texture cut from another real
photo (or, for a quarter of the objects, a procedural stripe / gradient / noise texture). Objects overlap in
paint order, so instance masks are the *visible* parts. Video clips move the objects with known constant
velocities (bouncing off the borders), scale them slowly and pan the background, so objects pass in front of
each other (occlusion) and may leave view.

Everything is a function of ``(seed, index)``: a sample never depends on how many others were generated or in
which order, so splits can be generated in parallel and regenerated exactly.

``style="photo"`` (the v2 training data) renders the same kind of scene to look more like a photograph
(``sam2.photo_style``): objects are shaded and cast a soft shadow, their edges are feathered, and each image (each
clip) gets one camera look (colour jitter, blur, sensor noise, JPEG). Its photos leave out the real-photo
evaluation set (``sam2.real_photos.EVAL_PHOTOS``), which must never be trained on. ``style="synthetic"`` (the
default, v1's data) is unchanged.

Layouts written: SA-1B for images (``<name>.jpg`` + ``<name>.json`` with COCO RLE masks) and DAVIS for video
(``JPEGImages/<video>/<frame>.jpg``, ``Annotations/<video>/<frame>.png`` with instance ids in a palette PNG).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import photo_style
from .images import PHOTOS, load_photo
from .real_photos import EVAL_PHOTOS

MIN_VISIBLE_PIXELS = 48  # smaller visible remnants are dropped from the annotations (and from video ids)
STYLES = ("synthetic", "photo")


@dataclass
class _Object:
    mask: np.ndarray  # bool (h, w): the shape in its own frame
    texture: np.ndarray  # uint8 (h, w, 3)
    center: np.ndarray  # (y, x) in scene pixels
    velocity: np.ndarray  # (dy, dx) per frame
    scale_rate: float  # relative size change per frame


def _check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return style


def _photos(style: str = "synthetic") -> list[np.ndarray]:
    """The photos a style draws backgrounds and textures from (``photo`` leaves out the evaluation photos)."""
    names = PHOTOS if _check_style(style) == "synthetic" else [n for n in PHOTOS if n not in EVAL_PHOTOS]
    return [load_photo(name) for name in names]


def _resize(image: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    mode = Image.NEAREST if nearest else Image.BILINEAR
    if image.dtype == bool:
        return np.asarray(Image.fromarray(image.astype(np.uint8) * 255).resize((width, height), mode)) > 127
    return np.asarray(Image.fromarray(image).resize((width, height), mode))


def _crop(rng: np.random.Generator, photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """A random crop with the requested aspect ratio, at least half the photo's short side, resized."""
    ph, pw = photo.shape[:2]
    side = rng.uniform(0.5, 1.0) * min(ph, pw * height / width)
    ch, cw = int(side), int(side * width / height)
    y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    return _resize(photo[y : y + ch, x : x + cw], height, width)


def _shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """A bool mask of a procedural shape filling most of a ``size`` x ``size`` box."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1  # [-1, 1]
    angle, radius = np.arctan2(yy, xx), np.hypot(yy, xx)
    kind = rng.integers(3)
    if kind == 0:  # rotated ellipse
        a, b, t = rng.uniform(0.5, 0.95), rng.uniform(0.3, 0.95), rng.uniform(0, np.pi)
        u, v = xx * np.cos(t) + yy * np.sin(t), -xx * np.sin(t) + yy * np.cos(t)
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == 1:  # star polygon with 3..8 points
        k, inner, phase = rng.integers(3, 9), rng.uniform(0.35, 0.8), rng.uniform(0, 2 * np.pi)
        edge = inner + (0.95 - inner) * (0.5 + 0.5 * np.cos(k * (angle - phase)))
        return radius <= edge
    coefficients = rng.normal(0, 0.12, size=(4, 2)) / np.arange(1, 5)[:, None]  # smooth random blob
    edge = 0.65 + sum(c * np.cos((i + 1) * angle) + s * np.sin((i + 1) * angle) for i, (c, s) in enumerate(coefficients))
    return radius <= np.clip(edge, 0.2, 0.95)


def _texture(rng: np.random.Generator, photos: list[np.ndarray], exclude: int, size: int) -> np.ndarray:
    if rng.random() < 0.75:
        index = rng.choice([i for i in range(len(photos)) if i != exclude])
        return _crop(rng, photos[index], size, size)
    colors = rng.integers(0, 256, size=(2, 3))
    yy, xx = np.mgrid[0:size, 0:size] / size
    kind = rng.integers(3)
    if kind == 0:  # stripes
        t = rng.uniform(0, np.pi)
        w = (np.sin((xx * np.cos(t) + yy * np.sin(t)) * rng.uniform(8, 30)) > 0)[..., None]
    elif kind == 1:  # gradient
        w = ((xx + yy) / 2)[..., None]
    else:  # noise
        w = rng.random((size, size, 1))
    return (colors[0] * w + colors[1] * (1 - w)).astype(np.uint8)


def _new_object(rng, photos, background_index, size, video: bool) -> _Object:
    extent = int(rng.uniform(0.15, 0.5) * size)
    speed = rng.uniform(2, 8) if video else 0.0
    direction = rng.uniform(0, 2 * np.pi)
    return _Object(
        mask=_shape(rng, extent),
        texture=_texture(rng, photos, background_index, extent),
        center=rng.uniform(0.15, 0.85, size=2) * size,
        velocity=speed * np.array([np.sin(direction), np.cos(direction)]),
        scale_rate=rng.uniform(-0.02, 0.02) if video else 0.0,
    )


def _paint(canvas: np.ndarray, ids: np.ndarray, obj: _Object, object_id: int, scale: float,
           style_rng: Optional[np.random.Generator] = None) -> None:
    """Paste ``obj`` at its center (clipped to the canvas); ``ids`` records which object is visible where.
    With ``style_rng`` the object is composited photo-style (shadow, feathered edge)."""
    extent = max(4, int(round(obj.mask.shape[0] * scale)))
    mask, texture = _resize(obj.mask, extent, extent, nearest=True), _resize(obj.texture, extent, extent)
    top, left = int(round(obj.center[0])) - extent // 2, int(round(obj.center[1])) - extent // 2
    h, w = ids.shape
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + extent, h), min(left + extent, w)
    if y0 >= y1 or x0 >= x1:
        return
    m = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    t = texture[y0 - top : y1 - top, x0 - left : x1 - left]
    if style_rng is None:
        canvas[y0:y1, x0:x1][m] = t[m]
    else:
        photo_style.composite(canvas[y0:y1, x0:x1], t, m, style_rng)
    ids[y0:y1, x0:x1][m] = object_id


def _styled(obj: _Object, style_rng: Optional[np.random.Generator]) -> _Object:
    if style_rng is None:
        return obj
    return _Object(obj.mask, photo_style.shade(obj.texture, style_rng), obj.center, obj.velocity, obj.scale_rate)


def render_scene(seed: int, index: int, size: int = 256, photos: Optional[list] = None, style: str = "synthetic"):
    """One image ``(size, size, 3)`` uint8 and its visible instance masks (list of bool arrays).
    ``photos`` must be ``_photos(style)`` when given (it only saves loading them again)."""
    photos = photos if photos is not None else _photos(style)
    rng = np.random.default_rng([seed, index, 0])
    style_rng = np.random.default_rng([seed, index, 2]) if _check_style(style) == "photo" else None
    background_index = int(rng.integers(len(photos)))
    image = _crop(rng, photos[background_index], size, size).copy()
    ids = np.zeros((size, size), np.int32)
    for object_id in range(1, int(rng.integers(1, 5)) + 1):
        obj = _styled(_new_object(rng, photos, background_index, size, video=False), style_rng)
        _paint(image, ids, obj, object_id, 1.0, style_rng)
    if style_rng is not None:
        image = photo_style.apply_look(image, photo_style.sample_look(style_rng), style_rng)
    masks = [ids == i for i in range(1, ids.max() + 1)]
    return image, [m for m in masks if m.sum() >= MIN_VISIBLE_PIXELS]


def render_clip(seed: int, index: int, frames: int = 8, size: int = 256, photos: Optional[list] = None,
                style: str = "synthetic"):
    """``frames`` images and per-frame instance-id maps (0 = background) of one clip with moving objects."""
    photos = photos if photos is not None else _photos(style)
    rng = np.random.default_rng([seed, index, 1])
    style_rng = np.random.default_rng([seed, index, 3]) if _check_style(style) == "photo" else None
    background_index = int(rng.integers(len(photos)))
    pan = int(size * 1.25)
    background = _crop(rng, photos[background_index], pan, pan)
    pan_velocity = rng.uniform(-2, 2, size=2)
    objects = [_styled(_new_object(rng, photos, background_index, size, video=True), style_rng)
               for _ in range(int(rng.integers(1, 4)))]
    look = photo_style.sample_look(style_rng) if style_rng is not None else None
    images, id_maps = [], []
    for t in range(frames):
        offset = np.clip(np.round((pan - size) / 2 + pan_velocity * t).astype(int), 0, pan - size)
        image = background[offset[0] : offset[0] + size, offset[1] : offset[1] + size].copy()
        ids = np.zeros((size, size), np.uint8)
        for object_id, obj in enumerate(objects, start=1):
            position = obj.center + obj.velocity * t
            period = 2 * size  # bounce off the borders: reflect the unbounded trajectory
            obj_now = _Object(obj.mask, obj.texture, size - np.abs(np.mod(position, period) - size), obj.velocity, 0)
            shadow_rng = None if style_rng is None else np.random.default_rng([seed, index, 4, object_id])
            _paint(image, ids, obj_now, object_id, (1 + obj.scale_rate) ** t, shadow_rng)  # same shadow every frame
        for object_id in range(1, len(objects) + 1):
            if 0 < (ids == object_id).sum() < MIN_VISIBLE_PIXELS:
                ids[ids == object_id] = 0  # a sliver is not an annotation
        images.append(image if look is None else photo_style.apply_look(image, look, style_rng))
        id_maps.append(ids)
    return images, id_maps


def _write_jpeg(path: str, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, quality=95)


def write_image_split(root: str, count: int, seed: int, size: int = 256, start: int = 0,
                      style: str = "synthetic") -> str:
    """Write scenes ``start .. start + count - 1`` in the SA-1B layout under ``root``; returns ``root``.
    (``start`` lets several processes write one split in parts.)"""
    from pycocotools import mask as mask_utils

    os.makedirs(root, exist_ok=True)
    photos = _photos(style)
    for index in range(start, start + count):
        image, masks = render_scene(seed, index, size, photos, style)
        name = f"synth_{index:06d}"
        annotations = []
        for object_id, m in enumerate(masks, start=1):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            annotations.append({
                "id": object_id, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "area": int(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            })
        record = {"image": {"image_id": index, "file_name": name + ".jpg", "height": size, "width": size},
                  "annotations": annotations}
        _write_jpeg(os.path.join(root, name + ".jpg"), image)
        with open(os.path.join(root, name + ".json"), "w") as f:
            json.dump(record, f)
    return root


def write_video_split(root: str, count: int, seed: int, frames: int = 8, size: int = 256, start: int = 0,
                      style: str = "synthetic") -> str:
    """Write clips ``start .. start + count - 1`` in the DAVIS layout under ``root``; returns ``root``."""
    from PIL import Image

    photos = _photos(style)
    palette = [0, 0, 0] + [int(c) for c in np.random.default_rng(0).integers(64, 256, size=255 * 3)]
    for index in range(start, start + count):
        images, id_maps = render_clip(seed, index, frames, size, photos, style)
        video = f"clip_{index:05d}"
        for sub in ("JPEGImages", "Annotations"):
            os.makedirs(os.path.join(root, sub, video), exist_ok=True)
        for t, (image, ids) in enumerate(zip(images, id_maps)):
            _write_jpeg(os.path.join(root, "JPEGImages", video, f"{t:05d}.jpg"), image)
            annotation = Image.fromarray(ids, mode="P")
            annotation.putpalette(palette)
            annotation.save(os.path.join(root, "Annotations", video, f"{t:05d}.png"))
    return root


def write_split(kind: str, root: str, count: int, seed: int, processes: int = 1, style: str = "synthetic") -> str:
    """Scenes (``kind="images"``) or clips (``"clips"``) ``0 .. count - 1`` of ``seed`` under ``root``, written
    once: an existing ``root`` is reused, and a new one appears completely or not at all (written beside it and
    renamed). ``processes`` workers write contiguous ranges of indices."""
    import multiprocessing
    import shutil
    from concurrent.futures import ProcessPoolExecutor

    if kind not in ("images", "clips"):
        raise ValueError(f"kind must be 'images' or 'clips', got {kind!r}")
    _check_style(style)
    if os.path.isdir(root):
        return root
    write = write_image_split if kind == "images" else write_video_split
    tmp = root + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    part = -(-count // processes)
    if processes == 1:
        write(tmp, count, seed, style=style)
    else:
        # spawned, not forked: a fork copies a process whose library threads (OpenMP, OpenVINO's TBB) may hold locks,
        # and the parent of such a fork was seen to crash in the test suite
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            for job in [pool.submit(write, tmp, min(part, count - start), seed, start=start, style=style)
                        for start in range(0, count, part)]:
                job.result()
    os.replace(tmp, root)
    return root
