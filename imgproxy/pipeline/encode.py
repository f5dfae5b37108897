"""Encode frames to the output format with tuned settings and, unless asked otherwise, no metadata."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from imgproxy.errors import BadParameter
from imgproxy.options import Format, Output
from imgproxy.settings import FormatSettings

# Largest side each encoder can write; bigger requests are a clear 400, not an encoder exception.
MAX_SIDE = {
    Format.JPEG: 65_500,
    Format.WEBP: 16_383,
    Format.AVIF: 65_536,
    Format.PNG: 2**31 - 1,
    Format.GIF: 65_535,
    Format.HEIC: 65_536,
}
PILLOW_NAME = {
    Format.JPEG: "JPEG",
    Format.PNG: "PNG",
    Format.WEBP: "WEBP",
    Format.AVIF: "AVIF",
    Format.GIF: "GIF",
    Format.HEIC: "HEIF",
}
GPS_IFD = 0x8825
ORIENTATION = 0x0112


@dataclass
class Frames:
    """One still image, or every frame of an animation with its timing."""

    images: list[Image.Image]
    durations: list[int] = field(default_factory=list)  # milliseconds per frame
    loop: int = 0
    disposal: list[int] = field(default_factory=list)  # GIF disposal method per frame


def choose_format(requested: Format, has_alpha: bool) -> Format:
    """Resolve the legacy bucket (`AUTO` after negotiation): PNG keeps alpha, JPEG otherwise."""
    if requested is not Format.AUTO:
        return requested
    return Format.PNG if has_alpha else Format.JPEG


def quality_for(fmt: Format, requested: int | None, settings: FormatSettings, lower_by: int = 0) -> int:
    """The request's quality, or the format's default lowered by `lower_by` (Save-Data), at least 1."""
    if requested is not None:
        return requested
    default = {
        Format.WEBP: settings.webp_quality,
        Format.AVIF: settings.avif_quality,
        Format.HEIC: settings.avif_quality,
    }
    return max(1, default.get(fmt, settings.jpeg_quality) - lower_by)


def kept_exif(source: Image.Exif | None) -> bytes | None:
    """The source's EXIF for `strip=0`: GPS always removed, orientation reset (it has been applied)."""
    if source is None or not len(source):
        return None
    source.pop(GPS_IFD, None)
    source[ORIENTATION] = 1
    return source.tobytes()


def encode(
    frames: Frames, fmt: Format, quality: int, output: Output, settings: FormatSettings, *, exif: bytes | None
) -> bytes:
    first = frames.images[0]
    if max(first.size) > MAX_SIDE[fmt]:
        side = "w" if first.width >= first.height else "h"
        raise BadParameter(side, f"{fmt.value} output is limited to {MAX_SIDE[fmt]} px per side")
    images = [_prepare(image, fmt, output) for image in frames.images]
    params = _params(fmt, quality, output, settings)
    if exif is not None and fmt is not Format.GIF:
        params["exif"] = exif
    if len(images) > 1:
        params.update(save_all=True, append_images=images[1:], duration=frames.durations, loop=frames.loop)
        if fmt is Format.GIF and frames.disposal:
            params["disposal"] = frames.disposal
    out = io.BytesIO()
    images[0].save(out, PILLOW_NAME[fmt], **params)
    return out.getvalue()


def _prepare(image: Image.Image, fmt: Format, output: Output) -> Image.Image:
    if fmt in (Format.WEBP, Format.AVIF, Format.HEIC) and image.mode == "L":
        image = image.convert("RGB")
    if output.colors and fmt in (Format.PNG, Format.GIF):
        method = Image.Quantize.FASTOCTREE if image.mode == "RGBA" else Image.Quantize.MEDIANCUT
        image = image.quantize(output.colors, method=method, dither=Image.Dither.FLOYDSTEINBERG)
    image.info.clear()  # nothing from the source (EXIF, XMP, comments, text, ICC, tRNS) reaches the output
    return image


def _params(fmt: Format, quality: int, output: Output, settings: FormatSettings) -> dict[str, Any]:
    if fmt is Format.JPEG:
        return {"quality": quality, "optimize": True, "progressive": output.progressive}
    if fmt is Format.WEBP:
        if output.lossless:
            return {"lossless": True, "quality": 100, "method": settings.webp_method}
        return {"quality": quality, "method": settings.webp_method}
    if fmt in (Format.AVIF, Format.HEIC):
        if output.lossless:  # YUV 4:4:4 at the top quality: lossless up to the RGB to YUV rounding
            return {"quality": 100, "subsampling": "4:4:4", "speed": settings.avif_speed}
        return {"quality": quality, "speed": settings.avif_speed} if fmt is Format.AVIF else {"quality": quality}
    if fmt is Format.PNG:
        return {"compress_level": settings.png_compress_level}
    return {"optimize": True}
