"""Building SAM2 models from the ``sam2`` package's own configs, exactly as users with checkpoints do."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

# Short names of the packaged SAM2.1 configs (the names of the official checkpoints without ``.pt``).
SAM2_CONFIGS = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def require_sam2():
    try:
        import sam2  # noqa: F401  (initialises sam2's Hydra config search path)
    except ImportError as e:  # pragma: no cover - sam2 is a core dependency
        raise ImportError("qsam2_ext needs Meta's `sam2` package: pip install sam2==1.1.0") from e


def config_path(config: str) -> str:
    """A packaged config for a short name (``sam2.1_hiera_t``), or ``config`` itself (a config path)."""
    return SAM2_CONFIGS.get(config, config)


def build_model(
    config: str,
    checkpoint: Optional[str] = None,
    *,
    device: str = "cpu",
    video: bool = False,
    overrides: Sequence[str] = (),
) -> nn.Module:
    """``build_sam2(config, checkpoint)`` (or the video predictor) with ``config`` a short name or a path.

    Without a checkpoint the weights keep their default initialisation (no download is ever attempted).
    """
    require_sam2()
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    builder = build_sam2_video_predictor if video else build_sam2
    return builder(config_path(config), checkpoint, device=device, hydra_overrides_extra=list(overrides))
