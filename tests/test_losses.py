"""SAM2's losses and the distillation terms against NumPy references and hand-computed values."""

import numpy as np
import pytest
import torch

from qsam2_ext.sam2.forward import ClipOutput, StepOutput
from qsam2_ext.sam2.losses import (
    LossWeights,
    bernoulli_kl,
    binarized_iou,
    dice_loss,
    focal_loss,
    loss_sums,
    supervised_terms,
    total_loss,
)


def np_focal(x, t, alpha=0.25, gamma=2.0):
    p = 1 / (1 + np.exp(-x))
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = np.where(t == 1, p, 1 - p)
    a_t = np.where(t == 1, alpha, 1 - alpha)
    return (a_t * ce * (1 - p_t) ** gamma).mean(axis=(-2, -1))


def test_focal_matches_numpy():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64) * 3
    t = (torch.rand(2, 3, 5, 7) > 0.6).double()
    np.testing.assert_allclose(focal_loss(x, t).numpy(), np_focal(x.numpy(), t.numpy()), rtol=1e-12)


def test_dice_hand_values():
    big = torch.full((1, 2, 2), 50.0)  # sigmoid ~ 1 everywhere
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # |P| = 4, |G| = 2, |P∩G| = 2: 1 - (2*2 + 1) / (4 + 2 + 1) = 2/7
    assert dice_loss(big, target).item() == pytest.approx(2 / 7)
    assert dice_loss(torch.where(target > 0, 50.0, -50.0), target).item() == pytest.approx(0.0, abs=1e-12)


def test_binarized_iou():
    logits = torch.tensor([[[[1.0, 1.0], [-1.0, 0.0]]]])  # predicts the first row (0 is not > 0)
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert binarized_iou(logits, target).item() == pytest.approx(1 / 3)
    assert binarized_iou(-logits.abs() - 1, torch.zeros_like(target)).item() == 0.0  # empty vs empty


def _step(masks, ious, scores):
    return StepOutput(masks=masks, low_res_masks=masks[..., ::2, ::2], ious=ious, object_scores=scores)


def test_multimask_supervises_the_best_mask_and_all_ious():
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :2] = True
    good = torch.where(gt, 8.0, -8.0)
    masks = torch.stack([-good, good, torch.zeros_like(good)], dim=1)  # (1, 3, 4, 4): wrong, right, unsure
    ious = torch.tensor([[0.5, 0.5, 0.5]])
    w = LossWeights()
    terms = supervised_terms(_step(masks, ious, torch.tensor([[3.0]])), gt, w)
    target = gt[:, None].expand_as(masks).float()
    assert terms["focal"].item() == pytest.approx(focal_loss(good[:, None], target[:, :1]).item())
    assert terms["dice"].item() == pytest.approx(dice_loss(good[:, None], target[:, :1]).item())
    # actual IoUs 0, 1, 0 (logit 0 is not > 0): |0.5 - 0| + |0.5 - 1| + |0.5 - 0| over 3
    assert terms["iou"].item() == pytest.approx(0.5)
    assert terms["object"].item() == pytest.approx(np.log1p(np.exp(-3.0)))


def test_absent_object_trains_only_its_score():
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks = torch.randn(1, 1, 4, 4)
    terms = supervised_terms(_step(masks, torch.rand(1, 1), torch.tensor([[2.0]])), gt, LossWeights())
    assert terms["focal"].item() == terms["dice"].item() == terms["iou"].item() == 0.0
    assert terms["object"].item() == pytest.approx(np.log1p(np.exp(2.0)))  # BCE(2, 0)


def test_bernoulli_kl_is_zero_only_at_agreement():
    t = torch.randn(100) * 4
    assert bernoulli_kl(t, t).abs().max().item() < 1e-6
    s = t + torch.randn(100)
    kl = bernoulli_kl(s, t)
    p, q = torch.sigmoid(t).double(), torch.sigmoid(s).double()
    ref = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    np.testing.assert_allclose(kl.double().numpy(), ref.numpy(), atol=1e-5)
    assert bernoulli_kl(torch.tensor([0.0]), torch.tensor([-1024.0])).item() == pytest.approx(np.log(2), rel=1e-5)


def _clip(seed, objects=3, frames=2, images=4):
    g = torch.Generator().manual_seed(seed)
    steps = [[_step(torch.randn(objects, 1, 8, 8, generator=g), torch.rand(objects, 1, generator=g),
                    torch.randn(objects, 1, generator=g))] for _ in range(frames)]
    return ClipOutput(steps, [torch.randn(images, 4, 2, 2, generator=g)], [])


def test_loss_sums_and_normalisation():
    out, teacher = _clip(0), _clip(1)
    gt = torch.rand(2, 3, 8, 8) > 0.5
    w = LossWeights(distill_mask=2.0, distill_features=3.0)
    sums = loss_sums(out, gt, w, teacher)
    by_hand = sum(supervised_terms(s, gt[t], w)["dice"].sum() for t, f in enumerate(out.steps) for s in f)
    assert sums["dice"].item() == pytest.approx(by_hand.item())
    mse = ((out.features[0] - teacher.features[0]) ** 2).flatten(1).mean(1).sum()
    assert sums["distill_features"].item() == pytest.approx(mse.item())
    total = total_loss(sums, w, objects=6, images=8)
    expected = sum(getattr(w, k) * v / (8 if k == "distill_features" else 6) for k, v in sums.items())
    assert total.item() == pytest.approx(expected.item())
    assert loss_sums(out, gt, w, out)["distill_mask"].abs().item() < 1e-5  # a student equal to its teacher
    assert set(loss_sums(out, None, LossWeights(distill_mask=1.0), teacher)) == {"distill_mask"}  # unlabeled
    assert set(loss_sums(out, gt, LossWeights(iou=0.0))) == {"focal", "dice", "object"}


def test_weights_are_validated():
    with pytest.raises(ValueError, match="dice"):
        LossWeights(dice=-1.0)
    assert LossWeights(focal=0, dice=0, iou=0, object=0, distill_features=1).distills
