"""Where pixels go: the source box to resample, the size to resample it to, and the final canvas.

Pure arithmetic on sizes, so it is planned before any pixel is decoded (the JPEG decoder's DCT scaling
needs the final scale up front) and tested exhaustively with hypothesis. Rules: the constrained side is
exact, the other rounds half-up and is never below 1 px; without `enlarge` the scale is capped at 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from imgproxy.errors import BadParameter
from imgproxy.options import Fit, Gravity, Options, Rect

Box = tuple[float, float, float, float]

ANCHORS: dict[Gravity, tuple[float, float]] = {
    Gravity.CENTER: (0.5, 0.5),
    Gravity.NORTH: (0.5, 0.0),
    Gravity.SOUTH: (0.5, 1.0),
    Gravity.EAST: (1.0, 0.5),
    Gravity.WEST: (0.0, 0.5),
    Gravity.NORTHEAST: (1.0, 0.0),
    Gravity.NORTHWEST: (0.0, 0.0),
    Gravity.SOUTHEAST: (1.0, 1.0),
    Gravity.SOUTHWEST: (0.0, 1.0),
}


def scale_box(box: Box, sx: float, sy: float, bounds: tuple[int, int]) -> Box:
    left, top, right, bottom = box
    return (left * sx, top * sy, min(right * sx, bounds[0]), min(bottom * sy, bounds[1]))


@dataclass(frozen=True)
class Geometry:
    box: Box  # region of the (oriented) source to resample: left, top, right, bottom
    size: tuple[int, int]  # what that region is resampled to
    canvas: tuple[int, int]  # final size: `size` plus `contain` padding
    offset: tuple[int, int]  # where `size` sits on the canvas
    region: Box  # the part of the source that may be used (the `crop` rectangle, or all of it)

    @property
    def scale(self) -> tuple[float, float]:
        """Output pixels per source pixel on each axis (drives shrink-on-load)."""
        left, top, right, bottom = self.box
        return (self.size[0] / (right - left), self.size[1] / (bottom - top))


def round_half_up(value: float | Fraction) -> int:
    return max(1, math.floor(value + Fraction(1, 2)))


def plan(source: tuple[int, int], options: Options, max_size: tuple[int, int]) -> Geometry:
    """Plan the geometry of `options` (with `dpr` already folded in) on a source of size `source`."""
    box = region = _crop_region(source, options.crop)
    size = _fit_size((box[2] - box[0], box[3] - box[1]), options)
    both = options.width is not None and options.height is not None
    if options.fit is Fit.COVER and both:
        box = _cover_box(box, size, options)
    # The exact aspect ratio of the output, so a size clamped to the limits is rounded once, not twice.
    if options.fit in (Fit.COVER, Fit.FILL) and both:
        aspect = Fraction(options.width, options.height)  # type: ignore[arg-type]
    else:
        aspect = Fraction(box[2] - box[0]) / Fraction(box[3] - box[1])
    size = _within(size, max_size, aspect)
    canvas = size
    if options.fit is Fit.CONTAIN and options.width and options.height:
        canvas = (options.width, options.height)
    offset = ((canvas[0] - size[0]) // 2, (canvas[1] - size[1]) // 2)
    return Geometry(box=box, size=size, canvas=canvas, offset=offset, region=region)


def _crop_region(source: tuple[int, int], crop: Rect | None) -> Box:
    width, height = source
    if crop is None:
        return (0.0, 0.0, float(width), float(height))
    if crop.x >= width or crop.y >= height:
        raise BadParameter("crop", f"the rectangle lies outside the {width}x{height} source")
    return (
        float(crop.x),
        float(crop.y),
        float(min(crop.x + crop.width, width)),
        float(min(crop.y + crop.height, height)),
    )


def _fit_size(region: tuple[float, float], options: Options) -> tuple[int, int]:
    # Exact rational arithmetic: a true half (61.5) must round up, which float division can miss.
    rw, rh = Fraction(region[0]), Fraction(region[1])
    w, h = options.width, options.height
    if w is None and h is None:
        return (round_half_up(rw), round_half_up(rh))
    if h is None or w is None:  # one side given: every fit scales uniformly
        by_width = h is None
    elif options.fit is Fit.FILL:
        return (w, h)
    elif options.fit is Fit.COVER:
        return _cover_size((rw, rh), (w, h), options.enlarge)
    else:
        by_width = w / rw <= h / rh  # True when the width constrains an `inside` fit
        if options.fit is Fit.OUTSIDE:
            by_width = not by_width
    scale = w / rw if by_width else h / rh  # type: ignore[operator]
    if scale > 1 and not options.enlarge:
        return (round_half_up(rw), round_half_up(rh))
    return (w, round_half_up(rh * scale)) if by_width else (round_half_up(rw * scale), h)  # type: ignore[return-value]


def _cover_size(region: tuple[Fraction, Fraction], target: tuple[int, int], enlarge: bool) -> tuple[int, int]:
    """Exactly the target, or without `enlarge` the largest crop of its aspect ratio the region holds."""
    rw, rh = region
    w, h = target
    if enlarge or (w <= rw and h <= rh):
        return target
    if rw / rh > Fraction(w, h):  # region wider than the target: full height
        return (min(round_half_up(rh * w / h), math.floor(rw)), round_half_up(rh))
    return (round_half_up(rw), min(round_half_up(rw * h / w), math.floor(rh)))


def _cover_box(region: Box, size: tuple[int, int], options: Options) -> Box:
    """The part of `region` with the aspect ratio of `size`, placed by gravity."""
    left, top, right, bottom = region
    rw, rh = right - left, bottom - top
    aspect = size[0] / size[1]
    cw, ch = (rh * aspect, rh) if rw / rh > aspect else (rw, rw / aspect)
    cw, ch = min(cw, rw), min(ch, rh)
    if options.gravity is Gravity.FOCAL:
        fx, fy = options.focal
        x = min(max(fx * rw - cw / 2, 0.0), rw - cw)
        y = min(max(fy * rh - ch / 2, 0.0), rh - ch)
    else:
        ax, ay = ANCHORS.get(options.gravity, (0.5, 0.5))  # smart/face: centred until attention moves it
        x, y = (rw - cw) * ax, (rh - ch) * ay
    # Clamped to the region: float steps must not push the box a hair outside it.
    return (max(left, left + x), max(top, top + y), min(right, left + x + cw), min(bottom, top + y + ch))


def _within(size: tuple[int, int], max_size: tuple[int, int], aspect: Fraction) -> tuple[int, int]:
    """Scale an over-limit size down to the limits, keeping the exact aspect ratio `aspect` (w/h)."""
    max_w, max_h = max_size
    if size[0] <= max_w and size[1] <= max_h:
        return size
    if Fraction(size[0], max_w) >= Fraction(size[1], max_h):  # the width is the binding limit
        return (max_w, min(round_half_up(max_w / aspect), max_h))
    return (min(round_half_up(max_h * aspect), max_w), max_h)
