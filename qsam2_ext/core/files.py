"""Files: atomic writes (a reader, or a run killed mid-write, sees the old file or the new one, never half of one),
and reading files as data: official-layout checkpoints (``{"model": state_dict}``), safetensors headers and the
JSON metadata stored in them, each with bounds and a one-line ``BadFileError`` naming the file and what is wrong.

Nothing here executes what a file contains: ``torch.load`` runs with ``weights_only=True`` (no pickle code, only
tensors and the classes registered as safe globals), and JSON is parsed into plain data with bounded size and
depth. Plain torch and the standard library."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from typing import Any, Callable, Iterator, Mapping, Union

import torch
from torch import nn

from ..errors import BadFileError, MissingFileError, describe

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it is fsync'ed and renamed onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp creates 0600 (and some writers recreate the file): make it look like any other written file
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


MAX_METADATA_BYTES = 64 * 1024  # the JSON metadata a file may carry (ours is ~200 bytes)
MAX_JSON_DEPTH = 16
_SAFETENSORS_HEADER_MAX = 100 * 1024 * 1024  # safetensors' own limit on its header


def check_file(path: PathLike) -> str:
    """``path`` as a string, if it is a non-empty regular file; else a ``BadFileError`` saying what it is."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(path, "no such file")
    if not os.path.isfile(path):
        raise BadFileError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise BadFileError(path, "the file is empty")
    return path


def _depth(value: Any, limit: int, depth: int = 0) -> None:
    if depth > limit:
        raise ValueError(f"nested deeper than {limit} levels")
    if isinstance(value, dict):
        for v in value.values():
            _depth(v, limit, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _depth(v, limit, depth + 1)


def parse_json_metadata(text: Any, source: str) -> dict:
    """A JSON object from ``text`` (the metadata string a file carries), bounded in size and depth."""
    if text is None or text == "":
        return {}
    if not isinstance(text, str):
        raise BadFileError(source, f"its metadata is a {type(text).__name__}, not JSON text")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise BadFileError(source, f"its metadata is larger than {MAX_METADATA_BYTES // 1024} KiB")
    try:
        value = json.loads(text)
        _depth(value, MAX_JSON_DEPTH)
    except (ValueError, RecursionError) as e:
        raise BadFileError(source, f"its metadata is not valid JSON ({describe(e, 120)})") from None
    if not isinstance(value, dict):
        raise BadFileError(source, f"its metadata is a JSON {type(value).__name__}, not an object")
    return value


def safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` header (``{}`` if none), read without loading any tensor."""
    path = check_file(path)
    try:
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            metadata = f.metadata()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type, OSError, or ValueError
        size = os.path.getsize(path)
        if size < 8:
            raise BadFileError(path, f"truncated: {size} bytes, not a safetensors file") from None
        with open(path, "rb") as fh:
            (header,) = struct.unpack("<Q", fh.read(8))
        if header > min(size - 8, _SAFETENSORS_HEADER_MAX):
            raise BadFileError(path, f"truncated or not a safetensors file (header of {header} bytes in a file of "
                                     f"{size})") from None
        raise BadFileError(path, f"not a readable safetensors file ({describe(e, 120)})") from None
    return dict(metadata or {})


def load_torch(path: PathLike, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors for empty, truncated or foreign files.

    ``mmap``: map the tensors' storage instead of reading it (zip-format files), for callers that only look at the
    plain data beside the tensors (metadata), so a large checkpoint costs no read."""
    path = check_file(path)
    with open(path, "rb") as f:
        head = f.read(4)
    zipped = head.startswith(b"PK\x03\x04")  # torch.save's format; else a legacy pickle
    if not (zipped or head[:1] == b"\x80"):
        raise BadFileError(path, "truncated or not a PyTorch checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file that is not a checkpoint
        text = str(e)
        if "Unsupported global" in text or "Unsupported operand" in text:
            raise BadFileError(path, "holds objects other than tensors and plain data (refused: loading them could "
                                     "run code)") from None
        if isinstance(e, EOFError) or "central directory" in text or "truncated" in text:
            raise BadFileError(path, "truncated or not a PyTorch checkpoint") from None
        raise BadFileError(path, f"not a readable PyTorch checkpoint ({describe(e, 160)})") from None


def read_checkpoint(path: PathLike) -> Mapping[str, torch.Tensor]:
    """The state dict of an official-format SAM2 checkpoint (``{"model": state_dict}``), with clear errors."""
    ckpt = load_torch(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), Mapping):
        found = sorted(map(str, ckpt))[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise BadFileError(path, f"not in the official SAM2 checkpoint format (a dict with a 'model' state dict); "
                                 f"found {found}")
    state_dict = ckpt["model"]
    bad = [str(k) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise BadFileError(path, f"its state dict holds entries that are not named tensors: {bad[:3]}")
    return state_dict


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise, listing them, if keys or shapes of ``state_dict`` do not match ``model`` (nothing is loaded)."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    shapes = sorted(f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                    if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape))
    if missing or unexpected or shapes:
        raise BadFileError(source, f"does not match the model: {len(missing)} missing keys {missing[:5]}, "
                                   f"{len(unexpected)} unexpected keys {unexpected[:5]}, {len(shapes)} shape "
                                   f"mismatches {shapes[:3]}")


