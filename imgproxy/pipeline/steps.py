"""The transform steps, in order. Each takes the image and the plan and is a no-op when unset.

Adding an operation is one function here, one entry in `STEPS` and one test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from imgproxy.options import Flip, Format, Options
from imgproxy.pipeline.geometry import Geometry

ALPHA_FORMATS = frozenset({Format.PNG, Format.WEBP, Format.AVIF, Format.GIF})
WHITE = (255, 255, 255, 255)
TRANSPARENT = (0, 0, 0, 0)


@dataclass(frozen=True)
class Plan:
    """Everything the steps need: the options, the geometry on the decoded pixels, the output format."""

    options: Options
    geometry: Geometry
    format: Format  # concrete: never AUTO


Step = Callable[[Image.Image, Plan], Image.Image]


def resize(image: Image.Image, plan: Plan) -> Image.Image:
    box, size = plan.geometry.box, plan.geometry.size
    if box == (0, 0, image.width, image.height) and size == image.size:
        return image
    if all(float(v).is_integer() for v in box) and size == (box[2] - box[0], box[3] - box[1]):
        return image.crop(tuple(int(v) for v in box))  # type: ignore[arg-type]
    # reducing_gap: a fast integer reduce() first, then Lanczos over the last factor of 3 or less.
    return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def pad(image: Image.Image, plan: Plan) -> Image.Image:
    """`fit=contain`: place the image on a canvas of exactly wxh in `bg`."""
    if plan.geometry.canvas == image.size:
        return image
    has_alpha = plan.format in ALPHA_FORMATS
    colour = plan.options.background or (TRANSPARENT if has_alpha else WHITE)
    mode = "RGBA" if has_alpha else "RGB"
    canvas = Image.new(mode, plan.geometry.canvas, colour if has_alpha else colour[:3])
    canvas.paste(image.convert(mode), plan.geometry.offset)
    return canvas


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


def flatten(image: Image.Image, plan: Plan) -> Image.Image:
    """Composite alpha onto `bg` (white by default; its own alpha ignored) for formats without alpha."""
    if plan.format in ALPHA_FORMATS or image.mode != "RGBA":
        return image
    colour = (plan.options.background or WHITE)[:3]
    canvas = Image.new("RGB", image.size, colour)
    canvas.paste(image, (0, 0), image)
    return canvas


STEPS: tuple[Step, ...] = (resize, pad, rotate, flip, flatten)
