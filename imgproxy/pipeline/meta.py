"""`/meta`: what a front end wants to know about a source before it lays out a page."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image, ImageCms

from imgproxy.pipeline import blurhash, decode
from imgproxy.pipeline.color import to_srgb

LQIP_SIDE = 24  # a placeholder this size is a few hundred bytes and still shows the composition


def describe(data: bytes, max_pixels: int, max_jpeg_scans: int, decoders: tuple[str, ...]) -> dict[str, Any]:
    image = decode.open_image(data, max_pixels, max_jpeg_scans, decoders)
    orient = decode.orientation(image)
    width, height = decode.oriented_size(image.size, orient)
    fmt = (image.format or "").lower()
    mode = image.mode
    has_alpha = "A" in mode or "a" in mode or "transparency" in image.info
    frames = decode.frame_count(image)
    icc = _icc_description(image.info.get("icc_profile"))
    image.draft("RGB", (LQIP_SIDE * 4, LQIP_SIDE * 4))
    small = to_srgb(decode.load(image, orient))
    small.thumbnail((LQIP_SIDE * 4, LQIP_SIDE * 4), Image.Resampling.LANCZOS)
    return {
        "width": width,
        "height": height,
        "format": "jpeg" if fmt == "mpo" else fmt,
        "mode": mode,
        "has_alpha": has_alpha,
        "frames": frames,
        "orientation": orient,
        "icc": icc,
        "bytes": len(data),
        "dominant_color": dominant_color(small),
        "blurhash": blurhash.encode(small),
        "lqip": lqip(small),
    }


def _icc_description(icc: bytes | None) -> str | None:
    if not icc:
        return None
    try:
        return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip() or None
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def dominant_color(image: Image.Image) -> str:
    """The most common of 8 median-cut colours (transparent pixels do not vote)."""
    rgb = image.convert("RGB")
    palette_image = rgb.quantize(8, method=Image.Quantize.MEDIANCUT)
    votes = palette_image
    if image.mode == "RGBA":
        # Transparent pixels get index 255, which the palette never uses, and their count is dropped.
        votes = palette_image.copy()
        votes.paste(255, mask=image.getchannel("A").point(lambda alpha: 255 if alpha < 128 else 0))
    counts: list[tuple[int, int]] = [
        (count, int(index))  # type: ignore[arg-type]  # palette colours are indices
        for count, index in votes.getcolors() or []
        if index != 255
    ]
    palette = palette_image.getpalette() or [0, 0, 0]
    index = max(counts)[1] if counts else 0
    r, g, b = palette[index * 3 : index * 3 + 3]
    return f"#{r:02x}{g:02x}{b:02x}"


def lqip(image: Image.Image) -> str:
    """A tiny WebP as a `data:` URI, for an instant placeholder."""
    tiny = image.copy()
    tiny.thumbnail((LQIP_SIDE, LQIP_SIDE), Image.Resampling.LANCZOS)
    tiny.info.clear()
    out = io.BytesIO()
    tiny.save(out, "WEBP", quality=40, method=4)
    return "data:image/webp;base64," + base64.b64encode(out.getvalue()).decode("ascii")
