"""SAM2's training losses (focal + dice on masks, IoU-prediction regression, object score) and teacher distillation.

Supervised terms follow SAM2's ``MultiStepMultiMasksAndIous``: with multimask output only the mask with the
lowest ``focal_weight * focal + dice_weight * dice`` is supervised, the predicted IoUs of all masks regress (L1)
onto their masks' actual IoU, mask terms count only on frames where the object is present, the object score is a
binary cross-entropy on presence, and every step (initial prediction and each correction click) of every frame
adds up. Terms are returned as sums over objects; the caller divides by the number of objects (of all processes).

Distillation compares the student with the float teacher run on the same prompts: ``distill_mask`` is the
Bernoulli KL divergence from the teacher's mask and object-score probabilities (zero when the two agree, finite
for SAM2's -1024 "no object" logits); ``distill_features`` is the mean squared error of the backbone levels the
SAM heads read, summed over images (the caller divides by the number of images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .forward import ClipOutput

OBJECT_TERMS = ("focal", "dice", "iou", "object", "distill_mask")
IMAGE_TERMS = ("distill_features",)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; SAM2's released training configs use 20 : 1 : 1 : 1 for the supervised ones."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    object: float = 1.0
    distill_mask: float = 0.0
    distill_features: float = 0.0

    def __post_init__(self):
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"loss weight {name} must be a non-negative number, got {value!r}")

    @property
    def supervised(self) -> bool:
        return any((self.focal, self.dice, self.iou, self.object))

    @property
    def distills(self) -> bool:
        return bool(self.distill_mask or self.distill_features)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.) averaged over the last two (spatial) dimensions."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 |P∩G| + 1) / (|P| + |G| + 1)`` on sigmoid probabilities, per mask."""
    prob = logits.sigmoid().flatten(-2)
    targets = targets.flatten(-2)
    return 1 - (2 * (prob * targets).sum(-1) + smooth) / (prob.sum(-1) + targets.sum(-1) + smooth)


@torch.no_grad()
def binarized_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with the binary targets, per mask (the IoU head's regression target)."""
    pred, gt = (logits > 0).flatten(-2), targets.flatten(-2) > 0
    union = (pred | gt).sum(-1).clamp_min(1)
    return (pred & gt).sum(-1) / union


def bernoulli_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(teacher || student) of Bernoulli distributions given by logits."""
    target = teacher_logits.sigmoid()
    cross = F.binary_cross_entropy_with_logits(student_logits, target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher_logits, target, reduction="none")
    return cross - entropy


def supervised_terms(step, gt: torch.Tensor, weights: LossWeights) -> dict[str, torch.Tensor]:
    """Per-object focal, dice, IoU and object-score losses of one step against ``gt`` (N, S, S) bool."""
    logits = step.masks.float()
    targets = gt[:, None].expand_as(logits).float()
    focal, dice = focal_loss(logits, targets), dice_loss(logits, targets)
    best = torch.argmin(weights.focal * focal + weights.dice * dice, dim=1, keepdim=True)
    present = gt.flatten(1).any(1).float()
    iou = (step.ious.float() - binarized_iou(logits, targets)).abs().mean(1)
    object_loss = F.binary_cross_entropy_with_logits(step.object_scores.float()[:, 0], present, reduction="none")
    return {
        "focal": focal.gather(1, best)[:, 0] * present,
        "dice": dice.gather(1, best)[:, 0] * present,
        "iou": iou * present,
        "object": object_loss,
    }


def distill_mask_terms(step, teacher_step) -> torch.Tensor:
    """Per-object KL from the teacher's mask probabilities (mean over masks and pixels) and object score."""
    masks = bernoulli_kl(step.low_res_masks.float(), teacher_step.low_res_masks.float()).flatten(1).mean(1)
    scores = bernoulli_kl(step.object_scores.float(), teacher_step.object_scores.float())[:, 0]
    return masks + scores


def loss_sums(
    out: ClipOutput,
    gt: Optional[torch.Tensor],
    weights: LossWeights,
    teacher: Optional[ClipOutput] = None,
) -> dict[str, torch.Tensor]:
    """The sum over objects (or images, for features) of each term with a weight that applies to the batch:
    supervised terms need ``gt`` (T, N, S, S), distillation terms a ``teacher`` output."""
    sums: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        if getattr(weights, name):
            sums[name] = sums[name] + value if name in sums else value

    for t, frame_steps in enumerate(out.steps):
        for s, step in enumerate(frame_steps):
            if gt is not None and weights.supervised:
                for name, value in supervised_terms(step, gt[t], weights).items():
                    add(name, value.sum())
            if teacher is not None:
                add("distill_mask", distill_mask_terms(step, teacher.steps[t][s]).sum())
    if teacher is not None:
        per_image = [((a.float() - b.float()) ** 2).flatten(1).mean(1) for a, b in zip(out.features, teacher.features)]
        add("distill_features", torch.stack(per_image).mean(0).sum())
    return sums


def total_loss(sums: dict[str, torch.Tensor], weights: LossWeights, objects: float, images: float) -> torch.Tensor:
    """``Σ weight * sum / count``, with counts taken over every process so that data parallel training equals
    single-process training on the whole batch."""
    return sum(getattr(weights, name) * value / (images if name in IMAGE_TERMS else objects)
               for name, value in sums.items())
