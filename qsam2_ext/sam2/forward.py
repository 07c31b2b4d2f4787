"""SAM2's training forward on a batch of clips (an image is a clip of one frame), built from SAM2Base's own steps.

The PyPI ``sam2`` has no training package, so this plays the part of Meta's ``SAM2Train``, calling the same
``SAM2Base`` methods its predictors use:

1. ``forward_image`` + ``_prepare_backbone_features`` encode every frame of every sample at once;
2. frame 0 is prompted (points or a box, or the ground-truth mask) and ``_track_step`` runs the memory-conditioned
   SAM heads, multimask output included (``_use_multimask`` decides, as at inference);
3. optional correction clicks on frame 0: each samples a click on the current error and re-runs
   ``_forward_sam_heads`` with all clicks so far and the previous low-resolution logits as mask prompt;
4. ``_encode_memory_in_output`` turns the final prediction into a memory, and frames 1.. are tracked through
   ``_track_step`` with no prompt, so memory attention, memory encoder and object pointers are trained too.

Objects of all samples form one batch; each object looks up the features of its own sample's frame.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import torch
from torch import nn

from .prompts import correction_click


@dataclass
class ClipBatch:
    """Model-ready inputs of ``B`` samples of ``T`` frames holding ``N`` objects in all."""

    images: torch.Tensor  # (T * B, 3, S, S) normalised; image t * B + b is frame t of sample b
    object_sample: torch.Tensor  # (N,) long: the sample of each object
    point_coords: torch.Tensor  # (N, P, 2) float (x, y) in model pixels; frame-0 prompt
    point_labels: torch.Tensor  # (N, P) int32, SAM2 labels (-1 padding)
    masks: Optional[torch.Tensor]  # (T, N, S, S) bool ground truth; None for unlabeled data
    mask_prompt: bool  # prompt frame 0 with the ground-truth mask instead of the points
    click_seeds: list[int]  # per object: the seed of its correction clicks
    num_frames: int
    sources: list[str]

    @property
    def num_samples(self) -> int:
        return self.images.shape[0] // self.num_frames

    @property
    def num_objects(self) -> int:
        return self.object_sample.shape[0]

    def _map(self, fn) -> "ClipBatch":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return ClipBatch(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    def to(self, device) -> "ClipBatch":
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "ClipBatch":  # called by DataLoader(pin_memory=True)
        return self._map(torch.Tensor.pin_memory)


@dataclass
class StepOutput:
    """One run of the SAM heads for all objects (M = 3 with multimask output, else 1)."""

    masks: torch.Tensor  # (N, M, S, S) mask logits at the input resolution
    low_res_masks: torch.Tensor  # (N, M, S/4, S/4) the decoder's own logits
    ious: torch.Tensor  # (N, M) predicted IoU
    object_scores: torch.Tensor  # (N, 1) object-presence logit

    @classmethod
    def of(cls, sam_outputs) -> "StepOutput":
        low_res_multimasks, high_res_multimasks, ious, _, _, _, object_scores = sam_outputs
        return cls(high_res_multimasks, low_res_multimasks, ious, object_scores)


@dataclass
class ClipOutput:
    steps: list[list[StepOutput]]  # per frame, the initial prediction then one per correction click
    features: list[torch.Tensor]  # the backbone levels the SAM heads read, (T * B, C, h, w) each
    clicks: list[tuple[torch.Tensor, torch.Tensor]]  # correction clicks applied: ((N, 1, 2), (N, 1)) each


def _sample_clicks(gt: torch.Tensor, pred: torch.Tensor, rngs: list[np.random.Generator]):
    """One correction click per object from the ground truth and the binarised prediction (both (N, S, S))."""
    gt, pred = gt.cpu().numpy(), pred.cpu().numpy()
    picks = [correction_click(g, p, rng) for g, p, rng in zip(gt, pred, rngs)]
    coords = torch.tensor(np.stack([xy for xy, _ in picks]))[:, None]
    labels = torch.tensor([label for _, label in picks], dtype=torch.int32)[:, None]
    return coords, labels


def forward_clip(
    model: nn.Module,
    batch: ClipBatch,
    corrections: int = 0,
    replay: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None,
) -> ClipOutput:
    """Run ``model`` (a ``SAM2Base``) over the clips of ``batch``.

    ``corrections`` clicks are sampled on frame 0 from the ground truth (point and box prompts only); ``replay``
    applies given clicks instead (a teacher replays its student's clicks so both see the same prompts).
    """
    if replay is not None:
        corrections = len(replay)
    if corrections and (batch.masks is None or batch.mask_prompt):
        raise ValueError("correction clicks need ground-truth masks and a point or box prompt")
    frames, samples = batch.num_frames, batch.num_samples
    backbone = model.forward_image(batch.images)
    _, feats, pos, feat_sizes = model._prepare_backbone_features(backbone)
    memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    rngs = [np.random.default_rng(seed) for seed in batch.click_seeds] if corrections and replay is None else []
    steps, clicks = [], []
    for t in range(frames):
        rows = t * samples + batch.object_sample
        feats_t, pos_t = [f[:, rows] for f in feats], [p[:, rows] for p in pos]
        first = t == 0
        points = mask_prompt = None
        if first and batch.mask_prompt:
            mask_prompt = batch.masks[0, :, None].float()
        elif first:
            points = {"point_coords": batch.point_coords, "point_labels": batch.point_labels}
        out, sam, high_res_feats, pix_feat = model._track_step(
            t, first, feats_t, pos_t, feat_sizes, points, mask_prompt, memory, frames, False, None
        )
        frame_steps = [StepOutput.of(sam)]
        for c in range(corrections if first else 0):
            if replay is not None:
                coords, labels = replay[c]
            else:
                coords, labels = _sample_clicks(batch.masks[0], sam[4][:, 0] > 0, rngs)
            coords, labels = coords.to(pix_feat.device), labels.to(pix_feat.device)
            clicks.append((coords, labels))
            points = {
                "point_coords": torch.cat([points["point_coords"], coords], dim=1),
                "point_labels": torch.cat([points["point_labels"], labels], dim=1),
            }
            sam = model._forward_sam_heads(
                backbone_features=pix_feat,
                point_inputs=points,
                mask_inputs=sam[3],  # the previous best low-resolution logits, as SAM2's iterative training does
                high_res_features=high_res_feats,
                multimask_output=model._use_multimask(first, points),
            )
            frame_steps.append(StepOutput.of(sam))
        steps.append(frame_steps)
        _, _, _, low_res, high_res, obj_ptr, object_scores = sam
        out.update(pred_masks=low_res, pred_masks_high_res=high_res, obj_ptr=obj_ptr)
        if t < frames - 1:  # only later frames read the memory
            model._encode_memory_in_output(feats_t, feat_sizes, points, True, high_res, object_scores, out)
        memory["cond_frame_outputs" if first else "non_cond_frame_outputs"][t] = out
    levels = backbone["backbone_fpn"][-model.num_feature_levels:]
    return ClipOutput(steps, list(levels), clicks)
