"""Encode frames to the output format with tuned settings and, unless asked otherwise, no metadata."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageChops, ImageOps

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
    loop: int | None = None  # None: play once (a GIF without a loop extension)
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
    if fmt is Format.GIF and len(frames.images) > 1:
        frames = _merge_repeats(frames)
    images = [_prepare(image, fmt, output) for image in frames.images]
    params = _params(fmt, quality, output, settings)
    if exif is not None and fmt is not Format.GIF:
        params["exif"] = exif
    if len(images) > 1:
        params.update(save_all=True, append_images=images[1:], duration=frames.durations)
        if frames.loop is not None:
            params["loop"] = frames.loop
        elif fmt is not Format.GIF:  # GIF plays once without a loop extension; WebP and AVIF need loop=1
            params["loop"] = 1
        if fmt is Format.GIF and frames.disposal:
            # One value when all agree: Pillow merges identical frames, and a list no longer fits then.
            uniform = len(set(frames.disposal)) == 1
            params["disposal"] = frames.disposal[0] if uniform else frames.disposal
    return _save(images[0], PILLOW_NAME[fmt], params)


def _save(image: Image.Image, pillow_format: str, params: dict[str, Any]) -> bytes:
    """`image` encoded, through an in-memory file with a descriptor where the OS has one (Linux).

    Pillow's JPEG encoder holds the GIL while it writes to a `BytesIO`, but releases it while it writes
    to a file descriptor: with two render threads, JPEG encoding only runs in parallel the second way
    (measured in bench/PROFILE.md). The bytes are the same either way."""
    if not hasattr(os, "memfd_create"):
        buffer = io.BytesIO()
        image.save(buffer, pillow_format, **params)
        return buffer.getvalue()
    # Unbuffered: Pillow writes headers through the file object and the pixels through its descriptor.
    with open(os.memfd_create("imgproxy-encode", os.MFD_CLOEXEC), "w+b", buffering=0) as out:
        image.save(out, pillow_format, **params)
        out.seek(0)
        return out.read()


def _merge_repeats(frames: Frames) -> Frames:
    """Merge consecutive identical frames (adding their durations) before the GIF writer does it itself:
    its own merging leaves the per-frame disposal list one entry too long."""
    merged = Frames([frames.images[0]], [frames.durations[0]], frames.loop, [frames.disposal[0]])
    for image, duration, disposal in zip(frames.images[1:], frames.durations[1:], frames.disposal[1:], strict=True):
        if (
            image.size == merged.images[-1].size
            and ImageChops.difference(image, merged.images[-1]).getbbox(alpha_only=False) is None
        ):
            merged.durations[-1] += duration
        else:
            merged.images.append(image)
            merged.durations.append(duration)
            merged.disposal.append(disposal)
    return merged


def _prepare(image: Image.Image, fmt: Format, output: Output) -> Image.Image:
    image.info.clear()  # nothing from the source (EXIF, XMP, comments, text, ICC, tRNS) reaches the output
    if fmt in (Format.WEBP, Format.AVIF, Format.HEIC) and image.mode == "L":
        return image.convert("RGB")
    if fmt is Format.GIF and image.mode == "RGBA":
        return gif_palette(image, output.colors or 256)
    if output.colors and fmt in (Format.PNG, Format.GIF):
        method = Image.Quantize.FASTOCTREE if image.mode == "RGBA" else Image.Quantize.MEDIANCUT
        return image.quantize(output.colors, method=method, dither=Image.Dither.FLOYDSTEINBERG)
    return image


def gif_palette(image: Image.Image, colors: int) -> Image.Image:
    """RGBA → a palette image GIF can hold: `colors - 1` colours plus one fully transparent index.

    GIF transparency is on or off: alpha is thresholded at 50% first, so faint resampling halos around
    a transparent sprite vanish instead of turning into solid specks."""
    opaque = image.getchannel("A").point(lambda alpha: 255 if alpha >= 128 else 0)
    key = colors - 1
    palette_image = image.convert("RGB").quantize(key, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette = (palette_image.getpalette() or [])[: key * 3]
    palette_image.putpalette(palette + [0, 0, 0] * (256 - len(palette) // 3))
    palette_image.paste(key, mask=ImageOps.invert(opaque))
    palette_image.info = {"transparency": key}
    return palette_image


def _params(fmt: Format, quality: int, output: Output, settings: FormatSettings) -> dict[str, Any]:
    if fmt is Format.JPEG:
        progressive = settings.jpeg_progressive if output.progressive is None else output.progressive
        return {"quality": quality, "optimize": True, "progressive": progressive}
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
