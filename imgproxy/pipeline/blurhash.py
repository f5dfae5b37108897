"""BlurHash (https://blurha.sh) encoding: a compact text placeholder of an image's colours.

Written here from the published algorithm: a few DCT components of the image in linear light, the
DC term as sRGB and the AC terms quantised, all in base 83.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_BASE83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
ANALYSIS_SIDE = 32  # the hash needs only the broad colours: analyse a tiny copy


def _base83(value: int, length: int) -> str:
    return "".join(_BASE83[(value // 83 ** (length - 1 - i)) % 83] for i in range(length))


def _to_linear(srgb: np.ndarray) -> np.ndarray:
    v = srgb / 255.0
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _to_srgb(linear: float) -> int:
    v = min(max(linear, 0.0), 1.0)
    return round((v * 12.92 if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055) * 255)


def encode(image: Image.Image, x_components: int = 4, y_components: int = 3) -> str:
    """The BlurHash of `image` with `x_components` x `y_components` (1..9 each) components."""
    if not (1 <= x_components <= 9 and 1 <= y_components <= 9):
        raise ValueError("components must be 1..9")
    if image.mode == "RGBA":  # transparent areas read as white, as the dominant colour does
        small = Image.new("RGB", image.size, (255, 255, 255))
        small.paste(image, mask=image.getchannel("A"))
    else:
        small = image.convert("RGB")
    small.thumbnail((ANALYSIS_SIDE, ANALYSIS_SIDE), Image.Resampling.BILINEAR)
    pixels = _to_linear(np.asarray(small, dtype=np.float64))  # height, width, RGB
    height, width = pixels.shape[:2]
    xs, ys = np.arange(width), np.arange(height)
    factors = []
    for j in range(y_components):
        for i in range(x_components):
            basis = np.outer(np.cos(np.pi * j * ys / height), np.cos(np.pi * i * xs / width))
            scale = 1.0 if i == j == 0 else 2.0
            factors.append(scale * (basis[..., None] * pixels).sum(axis=(0, 1)) / (width * height))
    dc, ac = factors[0], factors[1:]
    parts = [_base83((x_components - 1) + (y_components - 1) * 9, 1)]
    if ac:
        peak = max(float(np.abs(np.array(ac)).max()), 1e-12)
        quantised_peak = max(0, min(82, int(peak * 166 - 0.5)))
        peak = (quantised_peak + 1) / 166
        parts.append(_base83(quantised_peak, 1))
    else:
        peak = 1.0
        parts.append(_base83(0, 1))
    parts.append(_base83((_to_srgb(dc[0]) << 16) + (_to_srgb(dc[1]) << 8) + _to_srgb(dc[2]), 4))
    for component in ac:
        q = [int(max(0, min(18, np.floor(np.sign(c) * (abs(c) / peak) ** 0.5 * 9 + 9.5)))) for c in component]
        parts.append(_base83(q[0] * 19 * 19 + q[1] * 19 + q[2], 2))
    return "".join(parts)
