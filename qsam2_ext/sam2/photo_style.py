"""Photo-like rendering for the synthetic data: object shading, soft edges and cast shadows when compositing, and
camera-style augmentations of the finished image (colour jitter, blur, sensor noise, JPEG re-encoding).

Everything is drawn from a caller's ``numpy`` generator, so a scene stays a pure function of its seed and index.
Masks are never touched: soft edges blend pixels across the boundary, the mask stays the object's hard shape.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Look:
    """One camera's rendering of a scene (a clip keeps one look for all its frames)."""

    brightness: float  # multiplies intensities
    contrast: float  # scales around the image mean
    saturation: float  # scales around each pixel's grey value
    blur: float  # Gaussian sigma in pixels (0: none)
    noise: float  # Gaussian noise sigma in intensity levels (0: none)
    jpeg: Optional[int]  # re-encode at this quality, or None


def sample_look(rng: np.random.Generator) -> Look:
    return Look(
        brightness=float(rng.uniform(0.7, 1.3)),
        contrast=float(rng.uniform(0.7, 1.3)),
        saturation=float(rng.uniform(0.6, 1.4)),
        blur=float(rng.uniform(0.3, 1.5)) if rng.random() < 0.5 else 0.0,
        noise=float(rng.uniform(1.0, 8.0)) if rng.random() < 0.5 else 0.0,
        jpeg=int(rng.integers(30, 96)) if rng.random() < 0.7 else None,
    )


def apply_look(image: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 HxWx3) as that camera renders it; ``rng`` draws the noise."""
    from scipy.ndimage import gaussian_filter

    x = image.astype(np.float32) * look.brightness
    x = (x - x.mean()) * look.contrast + x.mean()
    grey = x.mean(-1, keepdims=True)
    x = (x - grey) * look.saturation + grey
    if look.blur > 0:
        x = gaussian_filter(x, sigma=(look.blur, look.blur, 0))
    if look.noise > 0:
        x = x + rng.normal(0, look.noise, x.shape).astype(np.float32)
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if look.jpeg is not None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=look.jpeg)
        out = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def shade(texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light falling across an object: a linear brightness ramp in a random direction plus a darker rim, so a
    pasted texture reads as a lit, rounded surface rather than a flat cut-out."""
    size = texture.shape[0]
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    angle = rng.uniform(0, 2 * np.pi)
    ramp = 1 + rng.uniform(0.1, 0.35) * (xx * np.cos(angle) + yy * np.sin(angle))
    rim = 1 - rng.uniform(0.0, 0.3) * np.clip(np.hypot(xx, yy) - 0.5, 0, None) / 0.5
    return np.clip(texture.astype(np.float32) * (ramp * rim)[..., None], 0, 255).astype(np.uint8)


def composite(canvas: np.ndarray, texture: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Paste ``texture`` where ``mask`` is (both the region's size) into ``canvas`` in place: a soft cast shadow
    first, then the object with a feathered edge (about one pixel)."""
    from scipy.ndimage import gaussian_filter, shift

    m = mask.astype(np.float32)
    offset = rng.uniform(1, 4, size=2) * rng.choice([-1, 1], size=2)
    shadow = gaussian_filter(shift(m, offset, order=0), sigma=rng.uniform(1.5, 4)) * rng.uniform(0.2, 0.5)
    alpha = gaussian_filter(m, sigma=0.7) * (1 - m) + m  # feather outside the shape only: the mask stays opaque
    region = canvas.astype(np.float32) * (1 - shadow)[..., None]
    region = region * (1 - alpha)[..., None] + texture.astype(np.float32) * alpha[..., None]
    canvas[...] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
