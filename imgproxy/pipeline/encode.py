"""Encode to the output format with tuned settings and no metadata at all."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from imgproxy.errors import BadParameter
from imgproxy.options import Format
from imgproxy.settings import FormatSettings

# Largest side each encoder can write; bigger requests are a clear 400, not an encoder exception.
MAX_SIDE = {Format.JPEG: 65_500, Format.WEBP: 16_383, Format.AVIF: 65_536, Format.PNG: 2**31 - 1, Format.GIF: 65_535}
PILLOW_NAME = {Format.JPEG: "JPEG", Format.PNG: "PNG", Format.WEBP: "WEBP", Format.AVIF: "AVIF", Format.GIF: "GIF"}


def choose_format(requested: Format, has_alpha: bool) -> Format:
    """Resolve the legacy bucket (`AUTO` after negotiation): PNG keeps alpha, JPEG otherwise."""
    if requested is not Format.AUTO:
        return requested
    return Format.PNG if has_alpha else Format.JPEG


def encode(image: Image.Image, fmt: Format, quality: int | None, settings: FormatSettings) -> bytes:
    if max(image.size) > MAX_SIDE[fmt]:
        raise BadParameter("w", f"{fmt.value} output is limited to {MAX_SIDE[fmt]} px per side")
    if fmt in (Format.WEBP, Format.AVIF) and image.mode == "L":
        image = image.convert("RGB")
    image.info.clear()  # nothing from the source (EXIF, XMP, comments, text, ICC, tRNS) reaches the output
    params: dict[str, Any]
    if fmt is Format.JPEG:
        params = {"quality": quality or settings.jpeg_quality, "optimize": True, "progressive": True}
    elif fmt is Format.WEBP:
        params = {"quality": quality or settings.webp_quality, "method": settings.webp_method}
    elif fmt is Format.AVIF:
        params = {"quality": quality or settings.avif_quality, "speed": settings.avif_speed}
    elif fmt is Format.PNG:
        params = {"compress_level": settings.png_compress_level}
    else:
        params = {"optimize": True}
    out = io.BytesIO()
    image.save(out, PILLOW_NAME[fmt], **params)
    return out.getvalue()
