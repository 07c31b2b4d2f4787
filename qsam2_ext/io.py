"""Atomic file writes (moved to ``qsam2_ext.core.files``; this name stays for existing imports)."""

from .core.files import atomic_path, atomic_write, write_json, write_text  # noqa: F401
