"""Render the golden images of tests/test_operations.py, with an implementation independent of imgproxy's.

Run from the repository root after changing this file: `.venv/bin/python tests/make_golden.py`. The PNGs
in tests/golden/ are committed; the tests fetch the same renders over HTTP (`fm=png`) and compare them
with a tolerance (mean absolute difference, see `MEAN_TOLERANCE`), never byte for byte.

Every golden starts from the bundled `chelsea.png` resized with a plain Pillow Lanczos resize (what any
correct resize to that size gives), then applies the effect from its definition, in numpy: a true
separable Gaussian (imgproxy uses Pillow's box-blur approximation), an unsharp mask without threshold,
brightness/contrast/saturation as linear blends with black/mean luma/per-pixel luma, rounded corners as
the supersampled area of a rounded rectangle, padding and watermark compositing by array arithmetic.
Nothing here imports imgproxy, so a golden cannot inherit a bug from the code it checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path(__file__).resolve().parents[1] / "imgproxy" / "samples" / "chelsea.png"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
WIDTH = 160  # goldens stay small: at most 160 px wide
MEAN_TOLERANCE = 2.0  # mean |difference| per channel, on the 0..255 scale (observed: under 1)
MAX_TOLERANCE = 32  # no channel value may be further off (antialiased corner edges differ by up to ~25)
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, what "greyscale" means for 8-bit RGB

# The watermark used by the watermark golden (and written to the test's source root): 40x20, opaque red
# with a fully transparent right quarter, so a test can tell that the watermark's own alpha is honoured.
WATERMARK_SIZE = (40, 20)
WATERMARK_OPAQUE_WIDTH = 30
WATERMARK_COLOUR = (255, 0, 0)


def watermark_image() -> Image.Image:
    mark = Image.new("RGBA", WATERMARK_SIZE, (*WATERMARK_COLOUR, 0))
    mark.paste((*WATERMARK_COLOUR, 255), (0, 0, WATERMARK_OPAQUE_WIDTH, WATERMARK_SIZE[1]))
    return mark


def resized(width: int = WIDTH) -> np.ndarray:
    """The source at `width` (height rounded half up), as float RGB."""
    with Image.open(SOURCE) as source:
        rgb = source.convert("RGB")
    height = math.floor(rgb.height * width / rgb.width + 0.5)
    return np.asarray(rgb.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float64)


def gaussian(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur (kernel to 4 sigma, edges extended), per channel."""
    radius = math.ceil(4 * sigma)
    xs = np.arange(-radius, radius + 1)
    kernel = np.exp(-(xs**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(pixels, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(kernel[i] * padded[:, i : i + pixels.shape[1]] for i in range(len(kernel)))
    return sum(kernel[i] * rows[i : i + pixels.shape[0]] for i in range(len(kernel)))


def luma(pixels: np.ndarray) -> np.ndarray:
    return pixels @ LUMA


def brightness(pixels: np.ndarray, factor: float) -> np.ndarray:
    return pixels * factor


def contrast(pixels: np.ndarray, factor: float) -> np.ndarray:
    mean = luma(pixels).mean()
    return mean + factor * (pixels - mean)


def saturation(pixels: np.ndarray, factor: float) -> np.ndarray:
    grey = luma(pixels)[..., None]
    return grey + factor * (pixels - grey)


def unsharp(pixels: np.ndarray, amount: float, sigma: float = 1.0) -> np.ndarray:
    return pixels + amount * (pixels - gaussian(pixels, sigma))


def to_image(pixels: np.ndarray) -> Image.Image:
    mode = "RGBA" if pixels.shape[2] == 4 else "RGB"
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode)


def clipped(pixels: np.ndarray) -> np.ndarray:
    """Each effect's output is an 8-bit image: clip and round between chained effects."""
    return np.clip(np.rint(pixels), 0, 255)


def padded(sides: tuple[int, int, int, int], colour: tuple[int, int, int], width: int) -> Image.Image:
    """`sides` = top, right, bottom, left, around the source resized to `width`."""
    top, right, bottom, left = sides
    inner = resized(width)
    height, inner_width = inner.shape[:2]
    canvas = np.empty((height + top + bottom, inner_width + left + right, 3))
    canvas[...] = colour
    canvas[top : top + height, left : left + inner_width] = inner
    return to_image(canvas)


def rounded(radius: int, supersample: int = 8) -> Image.Image:
    """RGBA: alpha is the share of each pixel inside a rounded rectangle of the image's size."""
    pixels = resized()
    height, width = pixels.shape[:2]
    offsets = (np.arange(supersample) + 0.5) / supersample
    ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)  # sample rows, pixel-major
    xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    # Distance outside the inner rectangle whose corners are the circle centres.
    dx = np.maximum(np.maximum(radius - xs, xs - (width - radius)), 0)
    dy = np.maximum(np.maximum(radius - ys, ys - (height - radius)), 0)
    inside = (dx[None, :] ** 2 + dy[:, None] ** 2) <= radius**2
    coverage = inside.reshape(height, supersample, width, supersample).mean(axis=(1, 3))
    return to_image(np.dstack([pixels, coverage * 255]))


def watermarked(opacity: float, scale: float) -> Image.Image:
    """Southeast (the default gravity), inset by 2% of the shorter side, `scale` x the output width."""
    pixels = resized()
    height, width = pixels.shape[:2]
    mark = watermark_image()
    mark_width = round(width * scale)
    mark_height = round(mark.height * mark_width / mark.width)
    mark = mark.resize((mark_width, mark_height), Image.Resampling.LANCZOS)
    margin = round(min(width, height) * 0.02)
    x, y = width - margin - mark_width, height - margin - mark_height
    rgba = np.asarray(mark, dtype=np.float64)
    alpha = np.rint(rgba[..., 3:] * opacity) / 255
    region = pixels[y : y + mark_height, x : x + mark_width]
    pixels[y : y + mark_height, x : x + mark_width] = rgba[..., :3] * alpha + region * (1 - alpha)
    return to_image(pixels)


def combined() -> Image.Image:
    """The documented order: brightness, contrast, saturation, then sharpen."""
    pixels = clipped(brightness(resized(), 1.2))
    pixels = clipped(contrast(pixels, 1.3))
    pixels = clipped(saturation(pixels, 1.5))
    return to_image(unsharp(pixels, 1.0))


# name -> (the query that renders it through HTTP, with fm=png added by the test; the independent render)
GOLDENS: dict[str, tuple[str, Callable[[], Image.Image]]] = {
    "blur_2": (f"w={WIDTH}&blur=2", lambda: to_image(gaussian(resized(), 2.0))),
    "sharpen_1.5": (f"w={WIDTH}&sharpen=1.5", lambda: to_image(unsharp(resized(), 1.5))),
    "brightness_1.3": (f"w={WIDTH}&brightness=1.3", lambda: to_image(brightness(resized(), 1.3))),
    "brightness_0.6": (f"w={WIDTH}&brightness=0.6", lambda: to_image(brightness(resized(), 0.6))),
    "contrast_1.4": (f"w={WIDTH}&contrast=1.4", lambda: to_image(contrast(resized(), 1.4))),
    "contrast_0.5": (f"w={WIDTH}&contrast=0.5", lambda: to_image(contrast(resized(), 0.5))),
    "saturation_0.5": (f"w={WIDTH}&saturation=0.5", lambda: to_image(saturation(resized(), 0.5))),
    "saturation_2": (f"w={WIDTH}&saturation=2", lambda: to_image(saturation(resized(), 2.0))),
    "grayscale": (f"w={WIDTH}&grayscale=1", lambda: to_image(saturation(resized(), 0.0))),
    "combined": (f"w={WIDTH}&brightness=1.2&contrast=1.3&saturation=1.5&sharpen=1", combined),
    "pad": ("w=130&pad=5,10,15,20&bg=ff8000", lambda: padded((5, 10, 15, 20), (255, 128, 0), 130)),
    "radius_24": (f"w={WIDTH}&radius=24", lambda: rounded(24)),
    "watermark": (f"w={WIDTH}&wm=1&wm_o=0.6&wm_s=0.25", lambda: watermarked(0.6, 0.25)),
}


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.png"


def main() -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    for name, (query, build) in GOLDENS.items():
        image = build()
        assert image.width <= WIDTH, name
        image.save(golden_path(name), optimize=True)
        print(f"{golden_path(name).relative_to(GOLDEN_DIR.parent.parent)}  {image.size}  {query}")


if __name__ == "__main__":
    main()
