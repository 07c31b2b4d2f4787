"""Real photographs for calibration, from scikit-image's bundled data (offline, no masks), in SAM2's input format."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# Real photographs shipped inside scikit-image (most CC0 / public domain); grayscale ones are replicated to RGB.
PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera",
    "coins", "cell", "moon", "brick", "grass", "gravel", "clock", "page", "text", "colorwheel",
)


def load_photo(name: str) -> np.ndarray:
    """One bundled photo as a uint8 (H, W, 3) RGB array."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {PHOTOS}")
    try:
        import skimage.data
    except ImportError as e:
        raise ImportError("calibration photos need scikit-image: pip install 'qsam2_ext[test]'") from e
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def photo_batch(names: Sequence[str], size: int) -> torch.Tensor:
    """Photos resized and normalised exactly as SAM2's predictors do (``SAM2Transforms``): ``(n, 3, size, size)``."""
    from sam2.utils.transforms import SAM2Transforms

    transforms = SAM2Transforms(resolution=size, mask_threshold=0.0)
    return torch.stack([transforms(load_photo(n)) for n in names])
