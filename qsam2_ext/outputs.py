"""Output folders that never mix runs: a job writes into an empty (or new) folder; ``force`` first removes what an
earlier qsam2 run wrote there, and nothing else; a refused job creates nothing.

A folder written by the project lists its files in ``.qsam2-outputs.json``. That list is file content, so it is read
as data: only plain names of regular files directly inside the folder are ever removed.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from .errors import OutputFolderError
from .io import write_json

MANIFEST = ".qsam2-outputs.json"
_MAX_MANIFEST_BYTES = 64 * 1024


def _plain_name(name: object) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..", MANIFEST)
            and "/" not in name and "\\" not in name and "\0" not in name)


def _written_before(folder: str) -> list[str]:
    """Names the manifest of ``folder`` lists (only plain names; anything else in it is ignored)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path) or os.path.getsize(path) > _MAX_MANIFEST_BYTES:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            names = json.load(f).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in names if _plain_name(n)] if isinstance(names, list) else []


def check_output_folder(folder: str, *, force: bool = False, allow_existing: bool = False) -> None:
    """Raise ``OutputFolderError`` unless ``folder`` may receive a new run's files; creates and changes nothing.

    ``allow_existing``: the caller continues a run in that folder (``--resume``). ``force``: files an earlier run of
    the project wrote may be replaced; any other file still makes it an error."""
    if not os.path.exists(folder) or allow_existing:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise OutputFolderError(f"{folder}: exists and is not a folder")
        return
    if not os.path.isdir(folder):
        raise OutputFolderError(f"{folder}: exists and is not a folder")
    entries = sorted(os.listdir(folder))
    if not entries:
        return
    ours = set(_written_before(folder)) | {MANIFEST}
    foreign = [e for e in entries if e not in ours]
    if not force:
        raise OutputFolderError(f"{folder}: not empty ({len(entries)} entries, e.g. {', '.join(entries[:3])}): pass "
                                "--force to replace an earlier qsam2 run's files, or choose another folder")
    if foreign:
        raise OutputFolderError(f"{folder}: holds files qsam2 did not write ({', '.join(foreign[:3])}): --force only "
                                "replaces an earlier run's own files; choose another folder")


def claim_output_folder(folder: str, names: Iterable[str], *, force: bool = False) -> None:
    """Create ``folder`` if needed, remove (``force``) what an earlier run wrote, and record ``names`` as this run's
    files before any of them is written (so a run that stops half-way can still be cleared with ``force``)."""
    check_output_folder(folder, force=force)
    names = sorted(set(names))
    bad = [n for n in names if not _plain_name(n)]
    if bad:
        raise OutputFolderError(f"{folder}: output names must be plain file names, got {bad[:3]}")
    os.makedirs(folder, exist_ok=True)
    for name in _written_before(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
    write_json(os.path.join(folder, MANIFEST), {"files": names})


__all__ = ["MANIFEST", "check_output_folder", "claim_output_folder"]
