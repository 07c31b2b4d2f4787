"""SAM2 glue: building models from the ``sam2`` package and SAM2-specific calibration details."""

from .hiera import HieraPaddingMasks, block_row_masks
from .models import SAM2_CONFIGS, build_model, config_path

__all__ = ["HieraPaddingMasks", "SAM2_CONFIGS", "block_row_masks", "build_model", "config_path"]
