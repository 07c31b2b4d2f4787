"""Shared test fixtures: a tiny SAM2 architecture, a COCO dataset with known masks, a fake-quant wrapper."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qsam2_ext.sam2.data.synthetic import COLORS, rle, save_jpeg, scene

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


# -- a COCO dataset (the other formats: qsam2_ext.sam2.data.synthetic) --------------------------------------

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
