"""The QAT training loop shared by Q-SAM2 and every baseline: config, data stream, optimizer, checkpoints, DDP."""

from .config import TrainConfig
from .loop import train
from .optim import make_optimizer, parameter_groups

__all__ = ["TrainConfig", "make_optimizer", "parameter_groups", "train"]
