"""Query parameters → one frozen `Options`, through an explicit table of parameters and aliases.

The same table (`PARAMS`) feeds the parser, the OpenAPI document and the README's parameter reference,
so the three cannot drift apart. Parsing is strict: an unknown, repeated (also through an alias),
empty, malformed or out-of-range parameter is a `BadParameter` naming it and what is allowed.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from fractions import Fraction
from typing import Any
from urllib.parse import parse_qsl

from imgproxy.errors import BadParameter


class Fit(StrEnum):
    INSIDE = "inside"
    COVER = "cover"
    CONTAIN = "contain"
    FILL = "fill"
    OUTSIDE = "outside"


class Gravity(StrEnum):
    CENTER = "center"
    NORTH = "north"
    SOUTH = "south"
    EAST = "east"
    WEST = "west"
    NORTHEAST = "northeast"
    NORTHWEST = "northwest"
    SOUTHEAST = "southeast"
    SOUTHWEST = "southwest"
    FOCAL = "focal"
    SMART = "smart"  # the most detailed region (edges and saturation)
    FACE = "face"  # the faces a detector finds; smart when there is none or no detector


class Format(StrEnum):
    AUTO = "auto"
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    AVIF = "avif"
    GIF = "gif"
    HEIC = "heic"
    BLURHASH = "blurhash"  # a text placeholder, not an image

    @property
    def media_type(self) -> str:
        return "text/plain; charset=utf-8" if self is Format.BLURHASH else f"image/{self.value}"

    @property
    def animated(self) -> bool:
        """Formats that can carry every frame of an animated source."""
        return self in (Format.GIF, Format.WEBP, Format.AVIF)


class Flip(StrEnum):
    NONE = ""
    H = "h"
    V = "v"
    HV = "hv"


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Limits:
    """The bounds parsing checks against (from settings, passed in so parsing stays pure)."""

    max_width: int = 8192
    max_height: int = 8192
    avif: bool = True
    heic: bool = False  # pillow-heif installed
    watermark: bool = False  # a watermark image is configured


@dataclass(frozen=True)
class Effects:
    """Pixel adjustments after resizing; the defaults change nothing."""

    blur: float = 0.0  # Gaussian sigma in output pixels
    sharpen: float = 0.0  # unsharp-mask amount (1 = 100%)
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    grayscale: bool = False


@dataclass(frozen=True)
class Watermark:
    gravity: Gravity = Gravity.SOUTHEAST
    opacity: float = 0.5
    scale: float = 0.25  # watermark width as a share of the output width


@dataclass(frozen=True)
class Output:
    """Encoder choices beyond format and quality."""

    lossless: bool = False
    colors: int | None = None  # palette size for PNG and GIF
    progressive: bool | None = None  # JPEG; None: the server's default
    strip: bool = True  # False keeps EXIF (GPS is always removed)


@dataclass(frozen=True)
class Options:
    """A parsed request. `width`/`height` are CSS pixels until `resolve()` folds `dpr` into them."""

    width: int | None = None
    height: int | None = None
    fit: Fit = Fit.INSIDE
    gravity: Gravity = Gravity.CENTER
    focal: tuple[float, float] = (0.5, 0.5)
    dpr: float = 1.0
    enlarge: bool = False
    format: Format = Format.AUTO
    quality: int | None = None
    background: tuple[int, int, int, int] | None = None
    crop: Rect | None = None
    rotate: int = 0
    flip: Flip = Flip.NONE
    frame: int | None = None  # one still frame of an animation, from 0
    trim: int | None = None  # remove uniform borders within this colour tolerance (0..255)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, right, bottom, left, in output pixels
    radius: int = 0  # rounded corners, output pixels
    effects: Effects = Effects()
    watermark: Watermark | None = None
    output: Output = Output()


# --- value parsers: each takes the raw string and the limits, returns the value or raises ValueError ---

_INT = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"[0-9]{1,3}(\.[0-9]{1,6})?")
_HEX = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{8})")
_BOOL = {"0": False, "false": False, "1": True, "true": True}


def _int_in(lo: int, hi: int, value: str) -> int:
    if not _INT.fullmatch(value) or not lo <= int(value) <= hi:
        raise ValueError(f"an integer from {lo} to {hi}")
    return int(value)


def _decimal_in(lo: float, hi: float, value: str) -> float:
    if not _DECIMAL.fullmatch(value) or not lo <= float(value) <= hi:
        raise ValueError(f"a number from {lo:g} to {hi:g}")
    return float(value)


def _choice(enum: type[Enum], aliases: dict[str, str], value: str) -> Any:
    try:
        return enum(aliases.get(value.lower(), value.lower()))
    except ValueError:
        allowed = sorted({member.value for member in enum if member.value} | set(aliases))
        raise ValueError("one of " + ", ".join(allowed)) from None


def _bool(value: str) -> bool:
    if value.lower() not in _BOOL:
        raise ValueError("0 or 1")
    return _BOOL[value.lower()]


def _colour(value: str) -> tuple[int, int, int, int]:
    match = _HEX.fullmatch(value)
    if not match:
        raise ValueError("a colour RRGGBB or RRGGBBAA in hex")
    digits = match.group(1) + ("ff" if len(match.group(1)) == 6 else "")
    r, g, b, a = (int(digits[i : i + 2], 16) for i in range(0, 8, 2))
    return (r, g, b, a)


def _rect(value: str) -> Rect:
    parts = value.split(",")
    if len(parts) != 4 or not all(_INT.fullmatch(p) for p in parts):
        raise ValueError("x,y,w,h as four non-negative integers")
    x, y, w, h = (int(p) for p in parts)
    if w < 1 or h < 1:
        raise ValueError("a width and height of at least 1")
    return Rect(x, y, w, h)


def _pad(limits: Limits, value: str) -> tuple[int, int, int, int]:
    """CSS-style: one value for all sides, two for vertical,horizontal, or four for top,right,bottom,left."""
    parts = value.split(",")
    if len(parts) not in (1, 2, 4):
        raise ValueError("1, 2 or 4 comma-separated pixel counts (top,right,bottom,left)")
    sides = [_int_in(0, max(limits.max_width, limits.max_height), part) for part in parts]
    if len(sides) == 1:
        return (sides[0], sides[0], sides[0], sides[0])
    if len(sides) == 2:
        return (sides[0], sides[1], sides[0], sides[1])
    return (sides[0], sides[1], sides[2], sides[3])


def _compass(value: str) -> Gravity:
    gravity: Gravity = _choice(Gravity, {}, value)
    if gravity in (Gravity.FOCAL, Gravity.SMART, Gravity.FACE):
        raise ValueError("a compass gravity: center, north, south, east, west, northeast, ...")
    return gravity


def _rotation(value: str) -> int:
    if value not in ("0", "90", "180", "270"):
        raise ValueError("one of 0, 90, 180, 270")
    return int(value)


def _resize(limits: Limits, value: str) -> tuple[int | None, int | None]:
    match = re.fullmatch(r"([0-9]*)x([0-9]*)", value)
    if not match or not (match.group(1) or match.group(2)):
        raise ValueError("WxH, Wx or xH")
    w = _int_in(1, limits.max_width, match.group(1)) if match.group(1) else None
    h = _int_in(1, limits.max_height, match.group(2)) if match.group(2) else None
    return (w, h)


def _formats(limits: Limits) -> list[str]:
    return [f.value for f in Format if (f is not Format.AVIF or limits.avif) and (f is not Format.HEIC or limits.heic)]


def _format(limits: Limits, value: str) -> Format:
    fmt: Format = _choice(Format, {"jpg": "jpeg", "heif": "heic"}, value)
    if fmt.value not in _formats(limits):
        raise ValueError(f"one of {', '.join(_formats(limits))} ({fmt.value} output is not enabled on this server)")
    return fmt


def _watermark(limits: Limits, value: str) -> bool:
    enabled = _bool(value)
    if enabled and not limits.watermark:
        raise ValueError("0: no watermark image is configured on this server")
    return enabled


@dataclass(frozen=True)
class Param:
    """One query parameter: its names, how to parse it, and how to document it."""

    name: str
    aliases: tuple[str, ...]
    parse: Callable[[Limits, str], Any]
    schema: Callable[[Limits], dict[str, Any]]
    description: str
    example: str = ""
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", (self.name, *self.aliases))


def _enum_schema(enum: type[Enum], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "string", "enum": [m.value for m in enum if m.value] + list(extra)}


PARAMS: tuple[Param, ...] = (
    Param(
        "w",
        ("width",),
        lambda lim, v: _int_in(1, lim.max_width, v),
        lambda lim: {"type": "integer", "minimum": 1, "maximum": lim.max_width},
        "Target width in CSS pixels (multiplied by `dpr`).",
        "640",
    ),
    Param(
        "h",
        ("height",),
        lambda lim, v: _int_in(1, lim.max_height, v),
        lambda lim: {"type": "integer", "minimum": 1, "maximum": lim.max_height},
        "Target height in CSS pixels (multiplied by `dpr`).",
        "480",
    ),
    Param(
        "resize",
        (),
        _resize,
        lambda lim: {"type": "string", "pattern": r"^[0-9]*x[0-9]*$"},
        "Shorthand for `w` and `h`: `WxH`, `Wx` or `xH`.",
        "640x480",
    ),
    Param(
        "fit",
        (),
        lambda lim, v: _choice(Fit, {}, v),
        lambda lim: _enum_schema(Fit),
        "`inside` fits within wxh; `cover` fills wxh and crops; `contain` fits and pads to wxh with `bg`; "
        "`fill` stretches to wxh; `outside` covers wxh without cropping.",
        "cover",
    ),
    Param(
        "g",
        ("gravity",),
        lambda lim, v: _choice(Gravity, {}, v),
        lambda lim: _enum_schema(Gravity),
        "Crop anchor for `fit=cover`: a compass point; `focal` uses `fx`,`fy`; `smart` keeps the most detailed "
        "region; `face` centres on detected faces (`smart` when there are none).",
        "north",
    ),
    Param(
        "fx",
        (),
        lambda lim, v: _decimal_in(0, 1, v),
        lambda lim: {"type": "number", "minimum": 0, "maximum": 1},
        "Focal point x in 0..1 (implies `g=focal`).",
        "0.3",
    ),
    Param(
        "fy",
        (),
        lambda lim, v: _decimal_in(0, 1, v),
        lambda lim: {"type": "number", "minimum": 0, "maximum": 1},
        "Focal point y in 0..1 (implies `g=focal`).",
        "0.6",
    ),
    Param(
        "dpr",
        (),
        lambda lim, v: _decimal_in(1, 4, v),
        lambda lim: {"type": "number", "minimum": 1, "maximum": 4},
        "Device pixel ratio; multiplies `w` and `h`.",
        "2",
    ),
    Param(
        "enlarge",
        (),
        lambda lim, v: _bool(v),
        lambda lim: {"type": "integer", "enum": [0, 1]},
        "`1` allows upscaling beyond the source size.",
        "1",
    ),
    Param(
        "fm",
        ("format",),
        _format,
        lambda lim: {"type": "string", "enum": [*_formats(lim), "jpg"]},
        "Output format; `auto` negotiates from `Accept`; `blurhash` answers a BlurHash as text.",
        "webp",
    ),
    Param(
        "q",
        ("quality",),
        lambda lim, v: _int_in(1, 100, v),
        lambda lim: {"type": "integer", "minimum": 1, "maximum": 100},
        "Encoder quality; the default depends on the format.",
        "75",
    ),
    Param(
        "bg",
        (),
        lambda lim, v: _colour(v),
        lambda lim: {"type": "string", "pattern": "^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{8})$"},
        "Background `RRGGBB` or `RRGGBBAA` for `contain` padding and for flattening alpha.",
        "ffffff",
    ),
    Param(
        "crop",
        (),
        lambda lim, v: _rect(v),
        lambda lim: {"type": "string", "pattern": r"^[0-9]+,[0-9]+,[0-9]+,[0-9]+$"},
        "`x,y,w,h` rectangle in source pixels (after EXIF orientation), applied before resizing.",
        "0,0,400,300",
    ),
    Param(
        "rot",
        ("rotate",),
        lambda lim, v: _rotation(v),
        lambda lim: {"type": "integer", "enum": [0, 90, 180, 270]},
        "Clockwise rotation after resizing.",
        "90",
    ),
    Param(
        "flip",
        (),
        lambda lim, v: _choice(Flip, {}, v),
        lambda lim: _enum_schema(Flip),
        "Mirror after `rot`: `h`, `v` or `hv`.",
        "h",
    ),
    Param(
        "frame",
        (),
        lambda lim, v: _int_in(0, 100_000, v),
        lambda lim: {"type": "integer", "minimum": 0, "maximum": 100_000},
        "One still frame of an animated source, counted from 0.",
        "0",
    ),
    Param(
        "trim",
        (),
        lambda lim, v: _int_in(0, 255, v),
        lambda lim: {"type": "integer", "minimum": 0, "maximum": 255},
        "Remove uniform borders (the colour of the top-left pixel, within this tolerance) before resizing.",
        "10",
    ),
    Param(
        "blur",
        (),
        lambda lim, v: _decimal_in(0.1, 100, v),
        lambda lim: {"type": "number", "minimum": 0.1, "maximum": 100},
        "Gaussian blur, sigma in output pixels.",
        "2",
    ),
    Param(
        "sharpen",
        (),
        lambda lim, v: _decimal_in(0.1, 10, v),
        lambda lim: {"type": "number", "minimum": 0.1, "maximum": 10},
        "Unsharp mask amount (1 = 100%).",
        "0.8",
    ),
    *(
        Param(
            name,
            (),
            lambda lim, v: _decimal_in(0, 4, v),
            lambda lim: {"type": "number", "minimum": 0, "maximum": 4},
            f"{name.capitalize()} multiplier: 1 leaves the image unchanged.",
            "1.2",
        )
        for name in ("brightness", "contrast", "saturation")
    ),
    Param(
        "grayscale",
        (),
        lambda lim, v: _bool(v),
        lambda lim: {"type": "integer", "enum": [0, 1]},
        "`1` removes colour.",
        "1",
    ),
    Param(
        "pad",
        (),
        _pad,
        lambda lim: {"type": "string", "pattern": r"^[0-9]+(,[0-9]+){0,3}$"},
        "Padding in `bg` around the output: `all`, `vertical,horizontal` or `top,right,bottom,left` pixels.",
        "10,20",
    ),
    Param(
        "radius",
        (),
        lambda lim, v: _int_in(1, 4096, v),
        lambda lim: {"type": "integer", "minimum": 1, "maximum": 4096},
        "Rounded corners of this radius in pixels: transparent, or `bg` for formats without alpha.",
        "16",
    ),
    Param(
        "wm",
        (),
        _watermark,
        lambda lim: {"type": "integer", "enum": [0, 1] if lim.watermark else [0]},
        "`1` overlays the server's watermark image.",
        "1",
    ),
    Param(
        "wm_g",
        (),
        lambda lim, v: _compass(v),
        lambda lim: {"type": "string", "enum": [g.value for g in Gravity][:9]},
        "Watermark position.",
        "southeast",
    ),
    Param(
        "wm_o",
        (),
        lambda lim, v: _decimal_in(0, 1, v),
        lambda lim: {"type": "number", "minimum": 0, "maximum": 1},
        "Watermark opacity.",
        "0.5",
    ),
    Param(
        "wm_s",
        (),
        lambda lim, v: _decimal_in(0.01, 1, v),
        lambda lim: {"type": "number", "minimum": 0.01, "maximum": 1},
        "Watermark width as a share of the output width.",
        "0.25",
    ),
    Param(
        "lossless",
        (),
        lambda lim, v: _bool(v),
        lambda lim: {"type": "integer", "enum": [0, 1]},
        "`1` encodes WebP, AVIF or PNG without loss.",
        "1",
    ),
    Param(
        "colors",
        (),
        lambda lim, v: _int_in(2, 256, v),
        lambda lim: {"type": "integer", "minimum": 2, "maximum": 256},
        "Quantize PNG or GIF output to a palette of this many colours.",
        "64",
    ),
    Param(
        "progressive",
        (),
        lambda lim, v: _bool(v),
        lambda lim: {"type": "integer", "enum": [0, 1]},
        "JPEG progressive encoding (default from the server's settings, normally 1).",
        "0",
    ),
    Param(
        "strip",
        (),
        lambda lim, v: _bool(v),
        lambda lim: {"type": "integer", "enum": [0, 1]},
        "`0` keeps the source's EXIF (GPS is always removed); default 1 strips all metadata.",
        "0",
    ),
)


_BY_NAME: dict[str, Param] = {name: param for param in PARAMS for name in param.names}


def parse_options(items: Iterable[tuple[str, str]], limits: Limits) -> Options:
    """Parse `(name, value)` pairs as sent (repeats included) into `Options`."""
    raw: dict[str, Any] = {}
    for name, value in items:
        param = _BY_NAME.get(name)
        if param is None:
            raise BadParameter(name, "unknown parameter; known: " + ", ".join(p.name for p in PARAMS))
        if param.name in raw:
            raise BadParameter(name, "given more than once (" + " / ".join(param.names) + ")")
        if value == "":
            raise BadParameter(name, "empty value")
        try:
            raw[param.name] = param.parse(limits, value)
        except ValueError as exc:
            raise BadParameter(name, f"must be {exc}") from None
    return _build(raw)


def _build(raw: dict[str, Any]) -> Options:
    width, height = raw.get("w"), raw.get("h")
    if "resize" in raw:
        if width is not None or height is not None:
            raise BadParameter("resize", "cannot be combined with w or h")
        width, height = raw["resize"]
    gravity = raw.get("g", Gravity.CENTER)
    has_focal = "fx" in raw or "fy" in raw
    if has_focal:
        if "g" in raw and gravity is not Gravity.FOCAL:
            raise BadParameter("g", "fx/fy need g=focal (or no g)")
        gravity = Gravity.FOCAL
    return Options(
        width=width,
        height=height,
        fit=raw.get("fit", Fit.INSIDE),
        gravity=gravity,
        focal=(raw.get("fx", 0.5), raw.get("fy", 0.5)),
        dpr=raw.get("dpr", 1.0),
        enlarge=raw.get("enlarge", False),
        format=raw.get("fm", Format.AUTO),
        quality=raw.get("q"),
        background=raw.get("bg"),
        crop=raw.get("crop"),
        rotate=raw.get("rot", 0),
        flip=raw.get("flip", Flip.NONE),
        frame=raw.get("frame"),
        trim=raw.get("trim"),
        pad=raw.get("pad", (0, 0, 0, 0)),
        radius=raw.get("radius", 0),
        effects=Effects(
            blur=raw.get("blur", 0.0),
            sharpen=raw.get("sharpen", 0.0),
            brightness=raw.get("brightness", 1.0),
            contrast=raw.get("contrast", 1.0),
            saturation=raw.get("saturation", 1.0),
            grayscale=raw.get("grayscale", False),
        ),
        watermark=_watermark_options(raw),
        output=Output(
            lossless=raw.get("lossless", False),
            colors=raw.get("colors"),
            progressive=raw.get("progressive"),
            strip=raw.get("strip", True),
        ),
    )


def _watermark_options(raw: dict[str, Any]) -> Watermark | None:
    tuning = [name for name in ("wm_g", "wm_o", "wm_s") if name in raw]
    if not raw.get("wm"):
        if tuning:
            raise BadParameter(tuning[0], "needs wm=1")
        return None
    defaults = Watermark()
    return Watermark(
        gravity=raw.get("wm_g", defaults.gravity),
        opacity=raw.get("wm_o", defaults.opacity),
        scale=raw.get("wm_s", defaults.scale),
    )


def apply_dpr(options: Options, limits: Limits) -> Options:
    """Fold `dpr` into the size; a size pushed over the limits is scaled down, keeping its aspect ratio."""
    if options.dpr == 1.0:
        return options
    dpr = Fraction(str(options.dpr))  # the decimal as written (2.3), not its binary float approximation
    w = options.width * dpr if options.width else None
    h = options.height * dpr if options.height else None
    shrink = min(Fraction(1), Fraction(limits.max_width) / w if w else 1, Fraction(limits.max_height) / h if h else 1)
    return replace(
        options,
        width=max(1, math.floor(w * shrink + Fraction(1, 2))) if w else None,
        height=max(1, math.floor(h * shrink + Fraction(1, 2))) if h else None,
        dpr=1.0,
    )


def canonical(name: str) -> str | None:
    param = _BY_NAME.get(name)
    return param.name if param else None


def expand_preset(
    items: list[tuple[str, str]], preset: str | None, presets: Mapping[str, str], presets_only: bool
) -> list[tuple[str, str]]:
    """Put a named preset's options under the request's own (which win, by canonical name)."""
    if presets_only and items:
        raise BadParameter(items[0][0], "this server only accepts preset=NAME")
    if preset is None:
        if presets_only:
            raise BadParameter("preset", "this server only accepts preset=NAME")
        return items
    if preset not in presets:
        raise BadParameter("preset", f"unknown preset {preset[:64]!r}; known: " + ", ".join(sorted(presets)))
    items = _split_resize(items)
    given = {canonical(name) for name, _ in items}
    base = _split_resize(parse_qsl(presets[preset], keep_blank_values=True))
    return [item for item in base if canonical(item[0]) not in given] + items


def _split_resize(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`resize=WxH` as `w` and `h`, so a request's size overrides a preset's whichever way each spells it."""
    split: list[tuple[str, str]] = []
    for name, value in items:
        match = re.fullmatch(r"([0-9]*)x([0-9]*)", value) if name == "resize" else None
        if match and (match.group(1) or match.group(2)):
            split += [(axis, size) for axis, size in zip(("w", "h"), match.groups(), strict=True) if size]
        else:
            split.append((name, value))
    return split


def apply_ladder(options: Options, requested: Options, widths: Sequence[int], mode: str) -> Options:
    """Snap the device-pixel size up to the width ladder, so one image has a bounded number of variants.

    `strict` also refuses requested sizes that are not on the ladder; a size above its top is snapped down.
    """
    if mode == "off":
        return options
    if mode == "strict":
        for name, value in (("w", requested.width), ("h", requested.height)):
            if value is not None and value not in widths:
                raise BadParameter(name, "must be one of the ladder widths: " + ", ".join(map(str, widths)))

    def snap(value: int | None) -> int | None:
        if value is None:
            return None
        return widths[min(bisect.bisect_left(widths, value), len(widths) - 1)]

    return replace(options, width=snap(options.width), height=snap(options.height))
