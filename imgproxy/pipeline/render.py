"""The whole pipeline as one pure function: source bytes + options → encoded bytes.

decode header (budgets) → plan geometry → shrink-on-load → decode + orient → sRGB → STEPS → encode.
No HTTP, no settings global, no I/O: limits and encoder settings arrive as arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from imgproxy.options import Format, Options
from imgproxy.pipeline import decode
from imgproxy.pipeline.color import to_srgb
from imgproxy.pipeline.encode import choose_format, encode
from imgproxy.pipeline.geometry import Geometry, plan
from imgproxy.pipeline.steps import STEPS, Plan
from imgproxy.settings import FormatSettings, LimitsSettings


@dataclass(frozen=True)
class Rendered:
    content: bytes
    format: Format
    width: int
    height: int
    timings: dict[str, float]  # stage → milliseconds


def render(data: bytes, options: Options, fmt: Format, limits: LimitsSettings, formats: FormatSettings) -> Rendered:
    """Render `data` per `options` (dpr folded in) to `fmt` (`AUTO` = JPEG, or PNG with alpha)."""
    start = time.perf_counter()
    image = decode.open_image(data, limits.max_source_pixels, limits.max_jpeg_scans)
    orient = decode.orientation(image)
    source_size = decode.oriented_size(image.size, orient)
    geometry = plan(source_size, options, (limits.max_width, limits.max_height))
    sx, sy = geometry.scale
    decode.shrink_on_load(image, decode.oriented_size((source_size[0] * sx, source_size[1] * sy), orient))
    image = to_srgb(decode.load(image, orient))
    geometry = _rescale(geometry, source_size, image.size)
    decoded = time.perf_counter()

    step_plan = Plan(options=options, geometry=geometry, format=choose_format(fmt, image.mode == "RGBA"))
    for step in STEPS:
        image = step(image, step_plan)
    transformed = time.perf_counter()

    content = encode(image, step_plan.format, options.quality, formats)
    done = time.perf_counter()
    return Rendered(
        content=content,
        format=step_plan.format,
        width=image.width,
        height=image.height,
        timings={
            "decode": (decoded - start) * 1000,
            "transform": (transformed - decoded) * 1000,
            "encode": (done - transformed) * 1000,
        },
    )


def _rescale(geometry: Geometry, planned: tuple[int, int], decoded: tuple[int, int]) -> Geometry:
    """Map the planned source box onto the pixels the decoder actually produced (after DCT scaling)."""
    if planned == decoded:
        return geometry
    sx, sy = decoded[0] / planned[0], decoded[1] / planned[1]
    left, top, right, bottom = geometry.box
    return replace(geometry, box=(left * sx, top * sy, min(right * sx, decoded[0]), min(bottom * sy, decoded[1])))
