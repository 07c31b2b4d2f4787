"""Quantized SAM2 files as users share them: what the metadata of a file written by ``qsam2 quantize`` may say, and
``load_quantized(path)``, which builds the model that metadata names.

A file is data, never code or a path: the model it names must be one of the packaged configs (the four SAM2.1
sizes and the embedded ``qsam2_mini``), by short name; the other fields are validated by a strict schema before
anything is built, and no Hydra override, ``_target_``, interpolation or path is ever taken from it. A custom
architecture is built by the caller (``load_quantized(my_model, path)``), never from a file.
"""

from __future__ import annotations

import os
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from ..errors import BadFileError, one_line
from ..recipes.schema import Memory
from .models import PACKAGED_CONFIGS, build_model, check_image_size, packaged_name

PathLike = Union[str, os.PathLike]
MAX_IMAGE_SIZE = 4096


class ArtifactInfo(BaseModel):
    """The ``qsam2_ext`` metadata entry of a quantized file (all fields that ``qsam2 quantize`` writes)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # a packaged config's short name (older files: its packaged path); None: an architecture the caller builds
    model: Optional[str] = Field(default=None, max_length=64)
    image_size: Optional[int] = Field(default=None, ge=32, le=MAX_IMAGE_SIZE)
    recipe: Optional[str] = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9_.+-]+$")
    qat_steps: Optional[int] = Field(default=None, ge=0, le=10**9)
    memory: Optional[Memory] = None  # the recipe's video memory bank settings (qsam2 track)

    @field_validator("model")
    @classmethod
    def _packaged(cls, value: Optional[str]) -> Optional[str]:
        return value if value is None else packaged_name(value)

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, value: Optional[int]) -> Optional[int]:
        return value if value is None else check_image_size(value)


def artifact_info(metadata: dict, source: str) -> ArtifactInfo:
    """Validate a file's metadata; ``BadFileError`` naming the file and the first problem."""
    try:
        return ArtifactInfo.model_validate(metadata)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"])) or "metadata"
        raise BadFileError(source, f"metadata field {where!r}: {one_line(err['msg'], 160)} "
                                   f"({len(e.errors())} problem(s))") from None


def read_info(path: PathLike) -> ArtifactInfo:
    """The validated metadata of a quantized file (``BadFileError`` for an unreadable file or bad metadata)."""
    from qsam2_ext.integrations.torchao.serialization import read_metadata

    return artifact_info(read_metadata(path), os.fspath(path))


def load_quantized(model_or_path: Union[nn.Module, PathLike], checkpoint=None, *, video: bool = False,
                   device: str = "cpu") -> nn.Module:
    """A quantized SAM2, ready for ``SAM2ImagePredictor`` (or, with ``video=True``, ``SAM2VideoPredictor``).

    >>> model = load_quantized("sam2.1_hiera_t_w2a8.safetensors")      # written by `qsam2 quantize`
    >>> model = load_quantized(build_sam2(MY_CONFIG, None), "q.safetensors")   # any architecture you build

    With a path alone, the model is one of the packaged configs, named by the file's validated metadata. With a
    model you built and a checkpoint (path or state dict), that model is loaded in place.
    """
    from qsam2_ext.integrations.torchao.serialization import load_into

    if isinstance(model_or_path, nn.Module):
        if checkpoint is None:
            raise TypeError("load_quantized(model, checkpoint): the checkpoint is missing")
        return load_into(model_or_path, checkpoint)
    if checkpoint is not None:
        raise TypeError("load_quantized(path) or load_quantized(model, checkpoint), not (path, checkpoint)")
    info = read_info(model_or_path)  # validated before anything is built
    if info.model is None:
        raise BadFileError(model_or_path, "does not name its SAM2 model (not one of the packaged ones, or not written "
                                          "by qsam2 quantize): build the model yourself and call "
                                          "load_quantized(model, path)")
    model = build_model(info.model, video=video, image_size=info.image_size)
    return load_into(model, model_or_path).to(device)


__all__ = ["ArtifactInfo", "PACKAGED_CONFIGS", "artifact_info", "load_quantized", "read_info"]
