"""Shared test fixtures: a tiny SAM2 architecture, small datasets with known masks written in every supported
layout (coloured ellipses on noise, in exact and odd sizes), and a fake-quant wrapper."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# A real SAM2Base (same code paths: Hiera, FPN neck, memory attention/encoder, prompt encoder, mask decoder) shrunk
# so that a training step takes well under a second on CPU.
TINY = [
    "++model.image_encoder.trunk.embed_dim=32",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.dim_feedforward=256",
]


def tiny_model(image_size=64, video=False, seed=0):
    from qsam2_ext.sam2 import build_model

    torch.manual_seed(seed)
    return build_model("sam2.1_hiera_t", image_size=image_size, video=video, overrides=TINY)


class WeightFakeQuantLinear(nn.Module):
    """Test-only stand-in for the real module swap: a Linear whose weight goes through an LSC fake quantizer."""

    def __init__(self, linear: nn.Linear, bits: int = 2):
        from qsam2_ext.core import LSCQuantizer, WeightGranularity

        super().__init__()
        self.linear = linear
        self.quantizer = LSCQuantizer(bits, WeightGranularity.for_weight(linear.weight))

    def forward(self, x):
        return F.linear(x, self.quantizer(self.linear.weight), self.linear.bias)


def quantize_some(model, bits=2):
    """Wrap the mask decoder's IoU head and one trunk MLP layer, so quantizer parameters sit in encoder and decoder.

    Default-initialised Linear weights are uniform (|w - mean| <= 1.73 std): only LSC's 2-bit alpha (1.5) clips
    them, and so only then does alpha get a gradient from the start."""
    head = model.sam_mask_decoder.iou_prediction_head.layers
    head[0] = WeightFakeQuantLinear(head[0], bits)
    mlp = model.image_encoder.trunk.blocks[0].mlp.layers
    mlp[0] = WeightFakeQuantLinear(mlp[0], bits)
    return model


# -- datasets with known masks ---------------------------------------------------------------------------

COLORS = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 230], [240, 220, 30], [200, 50, 200]], np.uint8)


def grid_boundary_rows(m: int, k: int, bits: int, device: str = "cpu") -> torch.Tensor:
    """Rows whose inputs sit on their own ``bits``-bit token grid's boundaries ``center + j step`` and one or two ulps
    either side (where any rounding other than the reference's goes wrong first), at magnitudes from 2^-110 to 2^110;
    each row holds its min and max. Divisions are tensor by tensor (exact on CUDA too)."""
    scale = 2.0 ** torch.linspace(-110, 110, m, device=device).round()[:, None]
    c = torch.randn(m, 1, device=device)
    lo, hi = (c - 1.3) * scale, (c + 1.1) * scale
    step = (hi - lo) / torch.full_like(hi, 2**bits - 1)
    j = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1) + 1, (m, k), device=device).float()
    x = (lo + hi) / torch.full_like(hi, 2.0) + j * step
    up, down = torch.full_like(x, float("inf")), torch.full_like(x, float("-inf"))
    for _ in range(2):
        nudge = torch.randint(-1, 2, (m, k), device=device)
        x = torch.where(nudge > 0, torch.nextafter(x, up), torch.where(nudge < 0, torch.nextafter(x, down), x))
    x = torch.minimum(torch.maximum(x, lo), hi)
    x[:, :2] = torch.cat([lo, hi], 1)
    return x


def ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


def scene(rng: np.random.Generator, height: int, width: int, objects: int):
    """``(image, masks)``: ``objects`` coloured ellipses over a noisy background; later ones occlude earlier ones."""
    image = rng.integers(90, 140, (height, width, 3)).astype(np.uint8)
    masks = []
    for k in range(objects):
        m = ellipse(height, width, rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width,
                    rng.uniform(0.1, 0.25) * height, rng.uniform(0.1, 0.25) * width)
        image[m] = COLORS[k % len(COLORS)]
        masks.append(m)
    for k in range(objects):
        for later in masks[k + 1:]:
            masks[k] = masks[k] & ~later
    return image, masks


def save_jpeg(path: str, image: np.ndarray) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def save_id_png(path: str, ids: np.ndarray) -> None:
    """An indexed (palette) PNG of instance ids, as DAVIS ships its annotations."""
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0] + COLORS.flatten().tolist() + [0] * (3 * (255 - len(COLORS))))
    image.save(path)


def rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a mask, JSON-ready (as SA-1B stores it)."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}


def write_sa1b(root: str, n: int = 3, height: int = 48, width: int = 64, objects: int = 2, seed: int = 0) -> dict:
    """``sa_<i>.jpg`` + ``sa_<i>.json``; returns ``{"sa_<i>": [masks]}`` (annotation ids ``100 * i + k``)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(n):
        image, masks = scene(rng, height, width, objects)
        save_jpeg(os.path.join(root, f"sa_{i}.jpg"), image)
        record = {
            "image": {"image_id": i, "file_name": f"sa_{i}.jpg", "height": height, "width": width},
            "annotations": [{"id": 100 * i + k, "segmentation": rle(m), "area": int(m.sum())}
                            for k, m in enumerate(masks)],
        }
        with open(os.path.join(root, f"sa_{i}.json"), "w") as f:
            json.dump(record, f)
        truth[f"sa_{i}"] = masks
    return truth


def write_video(root: str, videos: int = 2, frames: int = 4, height: int = 48, width: int = 64, objects: int = 2,
                seed: int = 0, names=None) -> dict:
    """``JPEGImages/video<v>/<frame>.jpg`` + ``Annotations/...png`` of ellipses drifting right; returns
    ``{"video<v>": (T, H, W) id maps}`` (object ``k`` has id ``k + 1``)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for v in range(videos):
        name = f"video{v}"
        centers = [(rng.uniform(0.3, 0.7) * height, rng.uniform(0.2, 0.5) * width) for _ in range(objects)]
        maps = []
        for t in range(frames):
            image = rng.integers(90, 140, (height, width, 3)).astype(np.uint8)
            ids = np.zeros((height, width), np.int64)
            for k, (cy, cx) in enumerate(centers):
                m = ellipse(height, width, cy, cx + 2 * t, 0.2 * height, 0.15 * width)
                image[m] = COLORS[k % len(COLORS)]
                ids[m] = k + 1
            frame = names[t] if names else f"{t:05d}"
            save_jpeg(os.path.join(root, "JPEGImages", name, f"{frame}.jpg"), image)
            save_id_png(os.path.join(root, "Annotations", name, f"{frame}.png"), ids)
            maps.append(ids)
        truth[name] = np.stack(maps)
    return truth


def write_folder(root: str, n: int = 3, height: int = 48, width: int = 64, seed: int = 0) -> None:
    """Unlabeled images, every other one in a sub-folder."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, _ = scene(rng, height, width, 2)
        save_jpeg(os.path.join(root, "sub" if i % 2 else "", f"img{i}.jpg"), image)


def write_coco(root, n=3, h=48, w=64, seed=0):
    """COCO images with one RLE instance, one polygon (a rectangle) instance and one crowd annotation each."""
    rng = np.random.default_rng(seed)
    images, anns, truth = [], [], {}
    for i in range(n):
        image, (m,) = scene(rng, h, w, 1)
        x0, y0, x1, y1 = 5 + i, 4, 20 + i, 15  # polygon corners of a pixel-aligned rectangle
        image[y0:y1, x0:x1] = COLORS[2]
        m = m & ~_rect(h, w, x0, y0, x1, y1)
        save_jpeg(os.path.join(root, "images", f"{i:03d}.jpg"), image)
        images.append({"id": i + 1, "file_name": f"{i:03d}.jpg", "height": h, "width": w})
        anns.append({"id": 10 * i + 1, "image_id": i + 1, "iscrowd": 0, "segmentation": rle(m), "category_id": 1})
        anns.append({"id": 10 * i + 2, "image_id": i + 1, "iscrowd": 0, "category_id": 1,
                     "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
        anns.append({"id": 10 * i + 3, "image_id": i + 1, "iscrowd": 1, "category_id": 1, "segmentation": rle(~m)})
        truth[f"{i:03d}.jpg"] = (m, _rect(h, w, x0, y0, x1, y1))
    with open(os.path.join(root, "instances.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}, f)
    return truth


def _rect(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m
