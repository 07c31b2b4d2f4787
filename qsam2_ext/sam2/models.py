"""Building SAM2 models from the ``sam2`` package's own configs, exactly as users with checkpoints do."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from qsam2_ext.core.files import check_state_dict, read_checkpoint  # noqa: F401  (public here too)

# Short names of the packaged SAM2.1 configs (the names of the official checkpoints without ``.pt``).
SAM2_CONFIGS = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

# The embedded default: the project's own small trained SAM2 (see configs/qsam2/qsam2_mini.yaml).
DEFAULT_MODEL = "qsam2_mini"
DEFAULT_MODEL_CONFIG = "configs/qsam2/qsam2_mini.yaml"

# The models a *file* (a quantized artifact's metadata, a recipe) may name: the packaged configs, by short name.
# Any other architecture is built by the caller's code or an explicit --config argument, never from a file.
PACKAGED_CONFIGS = {**SAM2_CONFIGS, DEFAULT_MODEL: DEFAULT_MODEL_CONFIG}


def packaged_name(name: str) -> str:
    """The short name of a packaged config named by its short name or its packaged path; ``ValueError`` otherwise."""
    if isinstance(name, str):
        if name in PACKAGED_CONFIGS:
            return name
        for short, path in PACKAGED_CONFIGS.items():
            if name == path:
                return short
    raise ValueError(f"must be one of the packaged models {sorted(PACKAGED_CONFIGS)}, got {str(name)[:80]!r}")


def default_checkpoint() -> str:
    """Path of the embedded default model's checkpoint (official format, shipped as package data)."""
    from importlib.resources import files

    return str(files("qsam2_ext.sam2") / "checkpoints" / "qsam2_mini.pt")


def require_sam2():
    try:
        import sam2  # noqa: F401  (initialises sam2's Hydra config search path)
    except ImportError as e:  # pragma: no cover - sam2 is a core dependency
        raise ImportError("qsam2_ext needs Meta's `sam2` package: pip install sam2==1.1.0") from e
    _expose_our_configs()


def _expose_our_configs() -> None:
    """Make ``configs/qsam2/...`` resolvable by ``build_sam2``.

    Hydra finds our search-path plugin by scanning the ``hydra_plugins`` namespace package, which editable
    installs do not expose, and sam2 fixes its search path when imported. So register the plugin by hand and,
    if the search path lacks it, initialise sam2's Hydra context again exactly as ``import sam2`` does.
    """
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins

    from hydra_plugins.qsam2_ext import QSAM2ConfigSearchPath

    hydra = GlobalHydra.instance()
    if hydra.is_initialized():
        providers = {e.provider for e in hydra.config_loader().get_search_path().get_path()}
        if "qsam2_ext" in providers:
            return
    Plugins.instance().register(QSAM2ConfigSearchPath)
    hydra.clear()
    initialize_config_module("sam2", version_base="1.2")


def config_path(config: str) -> str:
    """A packaged config for a short name (``sam2.1_hiera_t``, ``qsam2_mini``), or ``config`` itself (a path)."""
    return PACKAGED_CONFIGS.get(config, config)


def check_image_size(image_size: int) -> int:
    """SAM2's input side must be a multiple of 32: Hiera tiles its 8x8 window position embedding over the
    stride-4 grid, and the mask decoder needs the stride-16 embedding to be whole."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32, got {image_size!r}")
    return image_size


def build_model(
    config: str,
    checkpoint: Optional[str] = None,
    *,
    device: str = "cpu",
    video: bool = False,
    image_size: Optional[int] = None,
    overrides: Sequence[str] = (),
) -> nn.Module:
    """``build_sam2(config, checkpoint)`` (or the video predictor) with ``config`` a short name or a path.

    Without a checkpoint the weights keep their default initialisation (no download is ever attempted).
    ``image_size`` (default: the config's 1024) sets the square input side; the memory attention's RoPE
    tables follow the token count by themselves, and ``image_predictor`` adapts the image predictor.
    """
    require_sam2()
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    overrides = list(overrides)
    if image_size is not None:
        overrides.append(f"++model.image_size={check_image_size(image_size)}")
    builder = build_sam2_video_predictor if video else build_sam2
    model = builder(config_path(config), None, device=device, hydra_overrides_extra=overrides)
    if checkpoint is not None:  # loaded here (not by build_sam2) for errors that list what does not match
        load_checkpoint(model, checkpoint)
    return model


def warm_position_encodings(model: nn.Module) -> None:
    """Fill the sine position-encoding tables a SAM2 model uses at its input size, on its device, so that
    ``torch.compile`` compiles it once.

    ``PositionEmbeddingSine`` caches a table per feature-map size in a dict, filling it on first use, and dynamo
    guards on that dict: a model compiled before its first call compiles again on its second. sam2 fills the tables
    ahead only for 1024² inputs and only where CUDA is available. The tables are what the first call would compute
    and keep. Call this once the model is on its device: the dict does not move with ``model.to``, and a table on
    another device is copied over on every call.
    """
    device = next(model.parameters()).device
    neck = model.image_encoder.neck
    first_stride = model.image_encoder.trunk.patch_embed.proj.stride[0]  # Hiera's levels: 4, 8, 16, 32
    levels = range(len(neck.convs))
    sizes = {neck.position_encoding: [model.image_size // (first_stride * 2**level) for level in levels],
             model.memory_encoder.position_encoding: [model.sam_image_embedding_size]}  # the memory: stride 16
    for encoding, sides in sizes.items():
        for side in sides:
            encoding(torch.empty(1, 0, side, side, device=device))  # a table depends only on the map's size


def load_checkpoint(model: nn.Module, path: str) -> nn.Module:
    """Load an official-format float checkpoint into ``model`` after checking that it matches."""
    state_dict = read_checkpoint(path)
    check_state_dict(model, state_dict, path)
    model.load_state_dict(state_dict, strict=True)
    return model


def check_checkpoint(path: str, config: str = DEFAULT_MODEL_CONFIG) -> str:
    """``path`` if it is an official-format float checkpoint of ``config``'s model; else ``BadFileError``, one line
    naming the file and what is wrong. For scripts that should refuse a bad file before any other work."""
    model = build_model(config)
    check_state_dict(model, read_checkpoint(path), path)
    return path


def image_predictor(model: nn.Module, **kwargs):
    """``SAM2ImagePredictor(model)`` that works at the model's own input size.

    The predictor hard-codes the backbone feature sizes of a 1024 input; they are the image side over the
    backbone strides 4, 8 and 16.
    """
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model, **kwargs)
    size = model.image_size
    predictor._bb_feat_sizes = [(size // s, size // s) for s in (4, 8, 16)]
    return predictor
