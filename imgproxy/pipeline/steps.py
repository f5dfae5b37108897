"""The transform steps, in order. Each takes the image and the plan and is a no-op when unset.

Adding an operation is one function here, one entry in `STEPS` and one test.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

from imgproxy.options import Flip, Format, Options
from imgproxy.pipeline.geometry import ANCHORS, Geometry

ALPHA_FORMATS = frozenset({Format.PNG, Format.WEBP, Format.AVIF, Format.GIF})
WHITE = (255, 255, 255, 255)
REDUCING_GAP = 2.0
TRANSPARENT = (0, 0, 0, 0)


@dataclass(frozen=True)
class Plan:
    """Everything the steps need: the options, the geometry on the decoded pixels, the output format."""

    options: Options
    geometry: Geometry
    format: Format  # concrete: never AUTO
    watermark: Image.Image | None = None  # the configured watermark, RGBA, when `wm=1`
    resample: Image.Resampling = Image.Resampling.BICUBIC  # the final filter after the integer reduce()


Step = Callable[[Image.Image, Plan], Image.Image]


def resize(image: Image.Image, plan: Plan) -> Image.Image:
    box, size = plan.geometry.box, plan.geometry.size
    if box == (0, 0, image.width, image.height) and size == image.size:
        return image
    region = tuple(round(v) for v in plan.geometry.region)
    if region != (0, 0, image.width, image.height):
        # Resampling reads beyond its box: cut to the `crop` rectangle first so nothing outside it leaks in.
        image = image.crop(region)  # type: ignore[arg-type]
        left, top = region[0], region[1]
        box = (
            max(0.0, box[0] - left),
            max(0.0, box[1] - top),
            min(float(image.width), box[2] - left),
            min(float(image.height), box[3] - top),
        )
    if all(float(v).is_integer() for v in box) and size == (box[2] - box[0], box[3] - box[1]):
        return image.crop(tuple(int(v) for v in box))  # type: ignore[arg-type]
    # reducing_gap: a fast integer reduce() (box filter) first, then the filter over the last factor of
    # 2 to 4. A gap of 3 was no better to the eye and cost up to 1.7x on large reductions (bench/PROFILE.md).
    return image.resize(size, plan.resample, box=box, reducing_gap=REDUCING_GAP)


def _on_canvas(image: Image.Image, plan: Plan, size: tuple[int, int], offset: tuple[int, int]) -> Image.Image:
    """Place `image` on a canvas of `size` in `bg`: transparent by default where the format has alpha,
    white otherwise. The image keeps its own alpha: `flatten` composites it on `bg` later if needed."""
    has_alpha = plan.format in ALPHA_FORMATS
    colour = plan.options.background or (TRANSPARENT if has_alpha else WHITE)
    if not has_alpha:
        colour = (*colour[:3], 255)  # padding is opaque where the output cannot be transparent
    mode = "RGBA" if has_alpha or image.mode == "RGBA" else "RGB"
    canvas = Image.new(mode, size, colour[: len(mode)])
    canvas.paste(image.convert(mode), offset)
    return canvas


def pad(image: Image.Image, plan: Plan) -> Image.Image:
    """`fit=contain`: place the image on a canvas of exactly wxh in `bg`."""
    if plan.geometry.canvas == image.size:
        return image
    return _on_canvas(image, plan, plan.geometry.canvas, plan.geometry.offset)


_ROTATIONS = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}


def rotate(image: Image.Image, plan: Plan) -> Image.Image:
    op = _ROTATIONS.get(plan.options.rotate)
    return image.transpose(op) if op is not None else image


def flip(image: Image.Image, plan: Plan) -> Image.Image:
    if plan.options.flip in (Flip.H, Flip.HV):
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if plan.options.flip in (Flip.V, Flip.HV):
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image


def _colour_only(image: Image.Image, change: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """Apply `change` to the colour channels; the alpha channel stays exactly as it was."""
    if image.mode != "RGBA":
        return change(image)
    changed = change(image.convert("RGB"))
    changed.putalpha(image.getchannel("A"))
    return changed


def adjust(image: Image.Image, plan: Plan) -> Image.Image:
    """brightness, contrast and saturation multipliers; grayscale is saturation 0."""
    effects = plan.options.effects
    changes = [(ImageEnhance.Brightness, effects.brightness), (ImageEnhance.Contrast, effects.contrast)]
    if image.mode != "L":
        changes.append((ImageEnhance.Color, 0.0 if effects.grayscale else effects.saturation))
    for enhancer, factor in changes:
        if factor != 1.0:
            image = _colour_only(image, functools.partial(_enhance, enhancer, factor))
    return image


def _enhance(
    enhancer: Callable[[Image.Image], ImageEnhance._Enhance], factor: float, image: Image.Image
) -> Image.Image:
    return enhancer(image).enhance(factor)


def blur(image: Image.Image, plan: Plan) -> Image.Image:
    sigma = plan.options.effects.blur
    return image.filter(ImageFilter.GaussianBlur(sigma)) if sigma else image


def sharpen(image: Image.Image, plan: Plan) -> Image.Image:
    amount = plan.options.effects.sharpen
    if not amount:
        return image
    unsharp = ImageFilter.UnsharpMask(radius=1.0, percent=round(amount * 100), threshold=2)
    return _colour_only(image, lambda rgb: rgb.filter(unsharp))


def extend(image: Image.Image, plan: Plan) -> Image.Image:
    """`pad=top,right,bottom,left`: a border in `bg` (transparent where the format has alpha)."""
    top, right, bottom, left = plan.options.pad
    if not (top or right or bottom or left):
        return image
    return _on_canvas(image, plan, (image.width + left + right, image.height + top + bottom), (left, top))


def round_corners(image: Image.Image, plan: Plan) -> Image.Image:
    """Corners outside the radius become transparent (and `bg` once flattened for JPEG)."""
    radius = min(plan.options.radius, image.width // 2, image.height // 2)
    if radius < 1:
        return image
    # Draw the mask at 4x and shrink it: antialiased edges without a per-pixel loop.
    big = Image.new("L", (image.width * 4, image.height * 4), 0)
    ImageDraw.Draw(big).rounded_rectangle((0, 0, big.width - 1, big.height - 1), radius * 4, fill=255)
    mask = big.resize(image.size, Image.Resampling.LANCZOS)
    rounded = image.convert("RGBA")
    rounded.putalpha(ImageChops.multiply(rounded.getchannel("A"), mask))
    return rounded


WATERMARK_MARGIN = 0.02  # of the output's shorter side, between the watermark and the edge


def watermark(image: Image.Image, plan: Plan) -> Image.Image:
    spec, mark = plan.options.watermark, plan.watermark
    if spec is None or mark is None:
        return image
    width = max(1, round(image.width * spec.scale))
    height = max(1, round(mark.height * width / mark.width))
    mark = mark.resize((width, height), Image.Resampling.LANCZOS)
    alpha = mark.getchannel("A").point(lambda value: round(value * spec.opacity))
    margin = round(min(image.size) * WATERMARK_MARGIN)
    ax, ay = ANCHORS[spec.gravity]
    x = round(margin + (image.width - width - 2 * margin) * ax)
    y = round(margin + (image.height - height - 2 * margin) * ay)
    base = image.convert("RGBA") if image.mode == "RGBA" else image.convert("RGB")
    base.paste(mark.convert(base.mode), (x, y), alpha)
    return base


def flatten(image: Image.Image, plan: Plan) -> Image.Image:
    """Composite alpha onto `bg` (white by default; its own alpha ignored) for formats without alpha."""
    if plan.format in ALPHA_FORMATS or image.mode != "RGBA":
        return image
    colour = (plan.options.background or WHITE)[:3]
    canvas = Image.new("RGB", image.size, colour)
    canvas.paste(image, (0, 0), image)
    return canvas


STEPS: tuple[Step, ...] = (
    resize,
    pad,
    rotate,
    flip,
    adjust,
    blur,
    sharpen,
    extend,
    round_corners,
    watermark,
    flatten,
)
