"""Bring any decoded mode to L, RGB or RGBA in sRGB, without clipping or leaking a transparent key."""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageCms

from imgproxy.pipeline.decode import guarded

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))

# Modes Pillow decodes to, mapped to the mode we work in (16-bit and float greys handled apart).
_TARGET_MODE = {
    "1": "L",
    "L": "L",
    "LA": "RGBA",
    "La": "RGBA",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}
_WIDE_GREY = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def to_srgb(image: Image.Image) -> Image.Image:
    """Normalise the mode, then convert an embedded ICC profile to sRGB (dropping the profile)."""
    icc = image.info.get("icc_profile")
    if image.mode == "P":
        # Palette transparency (a tRNS key colour or index) becomes real alpha, never a visible colour.
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("1", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")  # a transparent key colour becomes real alpha, never a visible colour
    elif image.mode in _WIDE_GREY:
        # 16-bit and float greys span 0..65535: scale to 8 bits rather than clip at 255.
        wide = image if image.mode in ("I", "F") else image.convert("I")
        image = wide.point(lambda value: value * (1 / 256)).convert("L")
    elif image.mode == "CMYK" and icc:
        converted = _apply_profile(image, icc, "RGB")
        image = converted if converted is not None else image.convert("RGB")
        icc = None
    elif _TARGET_MODE.get(image.mode, "RGB") != image.mode:
        image = image.convert(_TARGET_MODE.get(image.mode, "RGB"))
    if icc and image.mode in ("RGB", "RGBA"):
        image = _apply_profile(image, icc, image.mode) or image
    image.info.pop("icc_profile", None)
    return image


def _apply_profile(image: Image.Image, icc: bytes, out_mode: str) -> Image.Image | None:
    transform = _transform(icc, image.mode, out_mode)
    if transform is None:
        return None
    return guarded(lambda: ImageCms.applyTransform(image, transform))


@functools.lru_cache(maxsize=64)
def _transform(icc: bytes, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform | None:
    """A cached profile → sRGB transform; None for sRGB itself or a profile LittleCMS cannot use."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if in_mode != "CMYK" and "srgb" in (ImageCms.getProfileDescription(profile) or "").lower():
            return None
        return ImageCms.buildTransform(profile, _SRGB, in_mode, out_mode, ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None  # a broken profile is ignored, as browsers do
