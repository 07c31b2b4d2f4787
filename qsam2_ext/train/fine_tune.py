"""Named fine-tuning recipes: optimizer settings (``TrainConfig`` fields) that continue training a float checkpoint.

``outliers`` is the recipe that gives the embedded model heavy-tailed weights and activations, the property of
SAM2's encoder that Q-SAM2 targets (``docs/accuracy.md``; measured with ``benchmarks/outlier_recipes.py``): a large
constant learning rate, no weight decay and no gradient clipping, which lets AdamW's sign-like steps carry the
weights whose gradients keep one direction far out of the bulk. ``control`` continues training gently with the
original recipe's end-of-schedule settings: what more training alone does.
"""

from __future__ import annotations

FINE_TUNE_RECIPES: dict[str, dict] = {
    "control": dict(lr=1e-4, weight_decay=0.05, grad_clip=1.0, warmup_steps=20, schedule="cosine",
                    min_lr_ratio=0.05),
    "hot": dict(lr=2e-3, weight_decay=0.05, grad_clip=1.0, warmup_steps=20, schedule="constant"),
    "outliers_mild": dict(lr=5e-4, weight_decay=0.0, grad_clip=0.0, warmup_steps=20, schedule="cosine",
                          min_lr_ratio=0.05),
    "outliers": dict(lr=1e-3, weight_decay=0.0, grad_clip=0.0, warmup_steps=20, schedule="cosine",
                     min_lr_ratio=0.05),
    "outliers_hot": dict(lr=2e-3, weight_decay=0.0, grad_clip=0.0, warmup_steps=20, schedule="cosine",
                         min_lr_ratio=0.05),
}
