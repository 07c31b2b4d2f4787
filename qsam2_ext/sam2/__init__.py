"""SAM2 glue: building models from the ``sam2`` package, SAM2-specific calibration details, and the training and
evaluation pieces (data formats, prompts, losses, metrics, the clip forward)."""

from .hiera import block_row_masks, padding_masks, row_mask
from .models import (SAM2_CONFIGS, build_model, check_image_size, config_path, image_predictor,
                     warm_position_encodings)

__all__ = [
    "SAM2_CONFIGS", "block_row_masks", "build_model", "check_image_size", "config_path", "image_predictor",
    "padding_masks", "row_mask", "warm_position_encodings",
]
