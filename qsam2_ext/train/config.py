"""The training run's settings: one flat, validated dataclass (also the ``qsam2 train`` options)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

from ..sam2.data import POLICIES
from ..sam2.losses import LossWeights


MAX_PATTERN = 200  # characters of the decay_exempt expression


def _opt(help: str, default, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _opt("optimizer steps in the whole run", default=1000)
    batch_size: int = _opt("samples (images or clips) per step, over all processes", default=4)
    lr: float = _opt("peak learning rate of the weights", default=1e-5)
    quantizer_lr: float = _opt("peak learning rate of quantizer parameters (LSC/PACT alpha, LSQ step)", default=1e-3)
    weight_decay: float = _opt("AdamW weight decay of the weights (quantizer parameters get none)", default=0.01)
    decay_exempt: str = _opt("weights whose parameter name matches this regular expression (re.search) get no "
                             "weight decay; empty: none", default="")
    warmup_steps: int = _opt("linear warm-up steps", default=0)
    schedule: str = _opt("learning-rate decay after warm-up", default="cosine", choices=("cosine", "constant"))
    min_lr_ratio: float = _opt("final learning rate as a fraction of the peak (cosine)", default=0.1)
    grad_clip: float = _opt("clip the global gradient norm to this (0: off); SAM2 trains with 0.1", default=0.1)
    amp: str = _opt("autocast: bf16 on GPU and off on CPU (auto), or forced", "auto", ("auto", "bf16", "off"))
    seed: int = _opt("seed of data order, prompts and every step's randomness", default=0)
    checkpoint_every: int = _opt("write a checkpoint every N steps (and at the end)", default=100)
    clip_length: int = _opt("frames per sample: 1 trains on images, more on video clips (video data)", default=1)
    max_objects: int = _opt("objects per sample (random subset); random prompts per unlabeled image", default=8)
    box_prob: float = _opt("probability that a step prompts frame 0 with jittered boxes, not points", default=0.5)
    mask_prob: float = _opt("probability that a step prompts frame 0 with true masks (drawn first)", default=0.0)
    points: int = _opt("positive points per object in a point prompt", default=1)
    negative_points: int = _opt("negative points per object in a point prompt", default=0)
    box_noise: float = _opt("box jitter as a fraction of the box side", default=0.1)
    box_noise_bound: float = _opt("largest box jitter in pixels", default=20.0)
    corrections: int = _opt("iterative correction clicks on frame 0 (SAM2 uses up to 7)", default=0)
    focal: float = _opt("weight of the focal mask loss", default=20.0)
    dice: float = _opt("weight of the dice mask loss", default=1.0)
    iou: float = _opt("weight of the IoU-prediction L1 loss", default=1.0)
    object: float = _opt("weight of the object-score loss", default=1.0)
    distill_mask: float = _opt("weight of the teacher mask/object-score KL (needs a teacher)", default=0.0)
    distill_features: float = _opt("weight of the teacher image-feature MSE (needs a teacher)", default=0.0)
    num_workers: int = _opt("data-loading processes per training process", default=2)
    on_bad_sample: str = _opt("bad-sample policy: skip (report, use the next sample) or raise", "skip", POLICIES)

    # Fields a resumed run may change: they do not affect the weights it ends with.
    RESUMABLE = ("checkpoint_every", "num_workers")

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be an integer, got {value!r}")
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if f.type == "float" and not (number and math.isfinite(value)):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
            if f.metadata["choices"] is not None and value not in f.metadata["choices"]:
                raise ValueError(f"{f.name} must be one of {tuple(f.metadata['choices'])}, got {value!r}")
        positive = ("steps", "batch_size", "checkpoint_every", "clip_length", "max_objects", "points")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "quantizer_lr", "weight_decay", "warmup_steps", "grad_clip", "negative_points",
                     "box_noise", "box_noise_bound", "corrections", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("box_prob", "mask_prob", "min_lr_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if len(self.decay_exempt) > MAX_PATTERN:
            raise ValueError(f"decay_exempt must be at most {MAX_PATTERN} characters, got {len(self.decay_exempt)}")
        try:
            re.compile(self.decay_exempt)
        except re.error as e:
            raise ValueError(f"decay_exempt is not a regular expression: {e}") from None
        _ = self.loss_weights  # LossWeights validates the weights

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(self.focal, self.dice, self.iou, self.object, self.distill_mask, self.distill_features)

    def check_run(self, dataset, teacher, world_size: int) -> None:
        """Errors a run would otherwise meet late: raised before anything is built or written."""
        if self.batch_size % world_size:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by the {world_size} processes")
        if self.clip_length > 1 and not dataset.video:
            raise ValueError(f"clip_length {self.clip_length} needs a video dataset, not {dataset.format}")
        weights = self.loss_weights
        if weights.distills and teacher is None:
            raise ValueError("distill_mask / distill_features need a teacher model")
        if not dataset.labeled and not weights.distills:
            raise ValueError(f"the {dataset.format} dataset has no labels: train it by distillation "
                             "(distill_mask and/or distill_features > 0, with a teacher)")
        if dataset.labeled and not (weights.supervised or weights.distills):
            raise ValueError("every loss weight is zero")
        if self.corrections and not dataset.labeled:
            raise ValueError("correction clicks need ground-truth masks; the dataset has none")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown training settings: {unknown}")
        return cls(**data)

    def differences(self, other: "TrainConfig", ignore=()) -> list[str]:
        return [f.name for f in fields(self)
                if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)]


def prompt_kinds(config: TrainConfig, labeled: bool) -> dict[str, float]:
    """Probability of each frame-0 prompt kind per step (unlabeled data: random points only)."""
    if not labeled:
        return {"point": 1.0}
    box = (1 - config.mask_prob) * config.box_prob
    return {"mask": config.mask_prob, "box": box, "point": 1 - config.mask_prob - box}


def amp_enabled(config: TrainConfig, device_type: str) -> bool:
    return config.amp == "bf16" or (config.amp == "auto" and device_type == "cuda")

