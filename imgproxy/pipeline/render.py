"""The whole pipeline as one pure function: source bytes + options → encoded bytes.

open (budgets from the header) → plan geometry → shrink-on-load → decode + orient → sRGB → trim
→ content-aware gravity → STEPS on every frame → encode. No HTTP, no settings global, no I/O: limits,
encoder settings and the watermark arrive as arguments.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from PIL import Image

from imgproxy.errors import BadParameter, ImageProxyError, SourceTooLarge, UnsupportedImage
from imgproxy.options import Format, Options
from imgproxy.pipeline import attention, blurhash, decode
from imgproxy.pipeline.color import to_srgb
from imgproxy.pipeline.encode import Frames, choose_format, encode, kept_exif, quality_for
from imgproxy.pipeline.geometry import Geometry, plan, scale_box
from imgproxy.pipeline.steps import STEPS, Plan
from imgproxy.pipeline.trim import trim_box
from imgproxy.settings import FormatSettings, LimitsSettings

LOG = logging.getLogger("imgproxy.error")
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class RenderContext:
    """What a render needs besides the bytes and the options."""

    limits: LimitsSettings
    formats: FormatSettings
    negotiated: bool = False  # the format came from `Accept`: it may be swapped for a better fit
    quality_drop: int = 0  # Save-Data: lower the default quality by this much
    watermark: Image.Image | None = None
    decoders: tuple[str, ...] = decode.DECODERS


@dataclass(frozen=True)
class Rendered:
    content: bytes
    format: Format
    width: int
    height: int
    timings: dict[str, float]  # stage → milliseconds
    notes: dict[str, str] = field(default_factory=dict)  # response headers worth sending (e.g. X-Gravity)


def render(data: bytes, options: Options, fmt: Format, context: RenderContext) -> Rendered:
    """Render `data` per `options` (dpr folded in) to `fmt` (`AUTO` = JPEG, or PNG with alpha).

    Hostile bytes can also trip Pillow after decoding (a conversion, an encoder): whatever escapes as
    something other than the service's own errors is logged and answered as an unprocessable image."""
    try:
        return _render(data, options, fmt, context)
    except ImageProxyError:
        raise
    except Exception:
        LOG.exception("rendering failed on a source that decoded")
        raise UnsupportedImage("the image could not be processed") from None


def _render(data: bytes, options: Options, fmt: Format, context: RenderContext) -> Rendered:
    start = time.perf_counter()
    limits = context.limits
    image = decode.open_image(data, limits.max_source_pixels, limits.max_jpeg_scans, context.decoders)
    frame_count = _frames_to_render(image, options, fmt, limits)
    orient = decode.orientation(image)
    exif = None if options.output.strip else image.getexif()
    if fmt is Format.BLURHASH:
        image.draft("RGB", (blurhash.ANALYSIS_SIDE * 2, blurhash.ANALYSIS_SIDE * 2))
        text = blurhash.encode(to_srgb(decode.load(image, orient)))
        elapsed = (time.perf_counter() - start) * 1000
        return Rendered(text.encode(), Format.BLURHASH, 0, 0, {"decode": elapsed})

    source_size = decode.oriented_size(image.size, orient)
    geometry = None
    if options.trim is None:  # trimming changes the size to fit, so it must see full-size pixels
        geometry = plan(source_size, options, (limits.max_width, limits.max_height))
        sx, sy = geometry.scale
        decode.shrink_on_load(image, decode.oriented_size((source_size[0] * sx, source_size[1] * sy), orient))
    first = to_srgb(decode.load(image, orient))
    trimmed = trim_box(first, options.trim) if options.trim is not None else None
    if trimmed is not None:
        first = first.crop(tuple(int(v) for v in trimmed))  # type: ignore[arg-type]
    if geometry is None:
        geometry = plan(first.size, options, (limits.max_width, limits.max_height))
    else:
        geometry = _rescale(geometry, source_size, first.size)
    geometry, notes = attention.refine(first, geometry, options)
    decoded = time.perf_counter()

    out_format = _output_format(fmt, first, geometry, frame_count, context)
    if out_format is not fmt and fmt is not Format.AUTO:
        notes["X-Format-Fallback"] = f"{fmt.value} -> {out_format.value}"
    step_plan = Plan(
        options=options,
        geometry=geometry,
        format=out_format,
        watermark=context.watermark,
        resample=RESAMPLE[context.formats.resample],
    )
    if frame_count > 1:
        first = first.convert("RGBA")  # every frame in one mode: later frames may gain transparency
    frames = Frames([_apply_steps(first, step_plan)])
    if frame_count > 1:
        frames = _animation(
            image, first=frames, count=frame_count, orient=orient, trimmed=trimmed, step_plan=step_plan, limits=limits
        )
    transformed = time.perf_counter()

    quality = quality_for(out_format, options.quality, context.formats, context.quality_drop)
    content = encode(frames, out_format, quality, options.output, context.formats, exif=kept_exif(exif))
    done = time.perf_counter()
    result = frames.images[0]
    return Rendered(
        content=content,
        format=out_format,
        width=result.width,
        height=result.height,
        timings={
            "decode": (decoded - start) * 1000,
            "transform": (transformed - decoded) * 1000,
            "encode": (done - transformed) * 1000,
        },
        notes=notes,
    )


def _frames_to_render(image: Image.Image, options: Options, fmt: Format, limits: LimitsSettings) -> int:
    """Seek to `frame=N`, or decide how many frames of an animation to keep (1 when over budget)."""
    count = decode.frame_count(image)
    if options.frame is not None:
        if options.frame >= min(count, limits.max_frames):  # seeking decodes every frame before it
            raise BadParameter("frame", f"must be below {min(count, limits.max_frames)} (frames of the source)")
        frame = options.frame
        if image.width * image.height * (frame + 1) > limits.max_source_pixels:  # each frame sought is decoded
            raise SourceTooLarge(f"reaching frame {frame} decodes more pixels than this server's budget")
        decode.guarded(lambda: image.seek(frame))
        return 1
    if count == 1 or not (fmt.animated or fmt is Format.AUTO):
        return 1
    over = count > limits.max_frames or image.width * image.height * count > limits.max_source_pixels
    if over and limits.strict_animation:
        raise SourceTooLarge(f"the animation has {count} frames, over this server's frame or pixel budget")
    return 1 if over else count


def _output_format(
    fmt: Format, first: Image.Image, geometry: Geometry, frame_count: int, context: RenderContext
) -> Format:
    animated = frame_count > 1
    if fmt is Format.AUTO:  # the legacy bucket: keep animation as GIF, alpha as PNG
        return Format.GIF if animated else choose_format(fmt, first.mode == "RGBA")
    if fmt is Format.AVIF and context.negotiated:
        # Animated AVIF and very large AVIF encodes are slow: WebP is the next best a browser named.
        megapixels = geometry.canvas[0] * geometry.canvas[1] / 1e6
        if animated or megapixels > context.formats.avif_max_megapixels:
            return Format.WEBP
    return fmt


def _apply_steps(image: Image.Image, step_plan: Plan) -> Image.Image:
    for step in STEPS:
        image = step(image, step_plan)
    return image


def _animation(
    image: Image.Image,
    *,
    first: Frames,
    count: int,
    orient: int,
    trimmed: tuple[float, ...] | None,
    step_plan: Plan,
    limits: LimitsSettings,
) -> Frames:
    """Every frame through the same steps, with the source's durations, loop count and disposal."""
    loop = image.info.get("loop")
    frames = Frames(first.images, durations=[], loop=None if loop is None else int(loop), disposal=[])
    pixels = 0
    for index in range(count):
        decode.guarded(lambda i=index: image.seek(i))  # type: ignore[misc]
        # A later GIF frame can grow the canvas: count every frame at its real size against the budget.
        pixels += image.width * image.height
        if pixels > limits.max_source_pixels:
            if limits.strict_animation:
                raise SourceTooLarge("the animation's frames hold more pixels than this server's budget")
            return Frames(first.images[:1])  # over budget: the first frame only, as documented
        decode.guarded(image.load)  # some decoders (WebP) only fill in the frame's duration once loaded
        frames.durations.append(int(image.info.get("duration", 100)))
        frames.disposal.append(int(getattr(image, "disposal_method", 0)))
        if index == 0:
            continue
        frame = to_srgb(decode.oriented(decode.guarded(lambda: image.convert("RGBA")), orient))
        if trimmed is not None:
            frame = frame.crop(tuple(int(v) for v in trimmed))  # type: ignore[arg-type]
        frames.images.append(_apply_steps(frame, step_plan))
    return frames


def _rescale(geometry: Geometry, planned: tuple[int, int], decoded: tuple[int, int]) -> Geometry:
    """Map the planned boxes onto the pixels the decoder actually produced (after DCT scaling)."""
    if planned == decoded:
        return geometry
    sx, sy = decoded[0] / planned[0], decoded[1] / planned[1]
    return replace(
        geometry, box=scale_box(geometry.box, sx, sy, decoded), region=scale_box(geometry.region, sx, sy, decoded)
    )
