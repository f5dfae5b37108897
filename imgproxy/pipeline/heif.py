"""HEIC/HEIF through the optional `pillow-heif` extra, registered explicitly (never at import)."""

from __future__ import annotations

import functools


@functools.cache
def enable() -> bool:
    """Register the HEIF opener and saver with Pillow; False when the extra is not installed."""
    try:
        import pillow_heif  # noqa: PLC0415  (optional extra)
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True
