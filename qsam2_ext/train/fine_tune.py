"""Named fine-tuning recipes: optimizer settings (``TrainConfig`` fields) that continue training a float checkpoint.

They were compared by ``benchmarks/outlier_recipes.py`` for what issue 27 asks of the embedded model: SAM2-like heavy
tails (the property of SAM2's encoder that Q-SAM2 targets) at little cost in float accuracy. ``outliers`` (AdamW
with no weight decay and no gradient clipping, peak lr 1e-3, cosine decay) gave the heaviest activation tails
without losing float mIoU; in the CPU budget measured (300 steps of 4 images) no recipe made the weights
heavy-tailed (``docs/accuracy.md``). ``control`` continues training gently with the original recipe's
end-of-schedule settings (what more training alone does); ``hot`` (constant 2e-3, with decay and clipping) broke
the model at that batch size.
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
}
