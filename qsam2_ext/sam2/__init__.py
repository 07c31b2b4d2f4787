"""SAM2 glue: building models from the ``sam2`` package and SAM2-specific calibration details."""

from .hiera import block_row_masks, padding_masks, row_mask
from .models import SAM2_CONFIGS, build_model, config_path

__all__ = ["SAM2_CONFIGS", "block_row_masks", "build_model", "config_path", "padding_masks", "row_mask"]
