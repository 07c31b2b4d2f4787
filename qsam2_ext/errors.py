"""The project's own exception types: every problem with a file, an input or an output folder is one of these, with
a one-line message that names the file (or input) and what is wrong.

They subclass ``ValueError`` (what callers caught before they existed). The ``qsam2`` command prints any of them as
``qsam2 <command>: error: <message>`` and exits 2.
"""

from __future__ import annotations

import os
from typing import Optional, Union


class QSAM2Error(ValueError):
    """Base of the project's errors."""


class BadFileError(QSAM2Error):
    """A file that cannot be used: missing, empty, truncated, foreign, or with content outside the schema."""

    def __init__(self, path: Union[str, os.PathLike, None], problem: str):
        self.path, self.problem = (None if path is None else os.fspath(path)), problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class MissingFileError(BadFileError, FileNotFoundError):
    """A path that names no file (also a ``FileNotFoundError``, what callers of ``open`` expect)."""


class NonFiniteError(QSAM2Error):
    """NaN or infinity where a number is needed (an image, a calibration batch, a training loss)."""


class OutputFolderError(QSAM2Error):
    """An output folder that would mix a new run with files of an earlier one."""


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters (for messages quoting a library's error or a file's value)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(e: BaseException, limit: int = 200) -> Optional[str]:
    """``Type: message`` of a library's exception, on one line (an empty message gives the type alone)."""
    message = one_line(str(e), limit)
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


__all__ = ["BadFileError", "MissingFileError", "NonFiniteError", "OutputFolderError", "QSAM2Error", "describe",
           "one_line"]
