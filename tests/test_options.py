"""The query parser: every parameter and alias, strictness, limits, dpr folding, and fuzzing.

Expectations come from the documented rules (the issue), not from reading the results back.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from imgproxy.errors import BadParameter
from imgproxy.options import (
    PARAMS,
    Fit,
    Flip,
    Format,
    Gravity,
    Limits,
    Options,
    Rect,
    apply_dpr,
    parse_options,
)

LIMITS = Limits()
FAST = settings(max_examples=200, deadline=None)
ALL_NAMES = sorted(name for param in PARAMS for name in param.names)

Items = list[tuple[str, str]]


def parse(items: Items, limits: Limits = LIMITS) -> Options:
    return parse_options(items, limits)


def parse_query(query: str, limits: Limits = LIMITS) -> Options:
    """Parse a raw query string the way the web framework splits it (blank values kept)."""
    return parse_options(parse_qsl(query, keep_blank_values=True), limits)


def assert_bad(items: Items, param: str, limits: Limits = LIMITS) -> BadParameter:
    """The query must be refused with a 400 that names `param`."""
    with pytest.raises(BadParameter) as info:
        parse_options(items, limits)
    error = info.value
    assert error.status == 400
    assert error.extra["param"] == param
    assert error.detail.startswith(f"{param}:")
    return error


def half_up(value: Fraction) -> int:
    return max(1, math.floor(value + Fraction(1, 2)))


# --- the table: every parameter and every alias ---

VALID: list[tuple[str, str, dict[str, Any]]] = [
    ("w", "640", {"width": 640}),
    ("width", "640", {"width": 640}),
    ("w", "1", {"width": 1}),
    ("h", "480", {"height": 480}),
    ("height", "480", {"height": 480}),
    ("h", "8192", {"height": 8192}),
    ("resize", "640x480", {"width": 640, "height": 480}),
    ("resize", "640x", {"width": 640, "height": None}),
    ("resize", "x480", {"width": None, "height": 480}),
    ("fit", "inside", {"fit": Fit.INSIDE}),
    ("fit", "cover", {"fit": Fit.COVER}),
    ("fit", "contain", {"fit": Fit.CONTAIN}),
    ("fit", "fill", {"fit": Fit.FILL}),
    ("fit", "outside", {"fit": Fit.OUTSIDE}),
    *[("g", g.value, {"gravity": g}) for g in Gravity],
    *[("gravity", g.value, {"gravity": g}) for g in Gravity],
    ("fx", "0.3", {"focal": (0.3, 0.5), "gravity": Gravity.FOCAL}),
    ("fx", "0", {"focal": (0.0, 0.5), "gravity": Gravity.FOCAL}),
    ("fx", "1", {"focal": (1.0, 0.5), "gravity": Gravity.FOCAL}),
    ("fy", "0.6", {"focal": (0.5, 0.6), "gravity": Gravity.FOCAL}),
    ("fy", "1.0", {"focal": (0.5, 1.0), "gravity": Gravity.FOCAL}),
    ("dpr", "2", {"dpr": 2.0}),
    ("dpr", "1.5", {"dpr": 1.5}),
    ("dpr", "1", {"dpr": 1.0}),
    ("dpr", "4", {"dpr": 4.0}),
    ("enlarge", "1", {"enlarge": True}),
    ("enlarge", "0", {"enlarge": False}),
    ("fm", "jpeg", {"format": Format.JPEG}),
    ("fm", "jpg", {"format": Format.JPEG}),
    ("format", "jpg", {"format": Format.JPEG}),
    ("fm", "png", {"format": Format.PNG}),
    ("fm", "webp", {"format": Format.WEBP}),
    ("format", "webp", {"format": Format.WEBP}),
    ("fm", "avif", {"format": Format.AVIF}),
    ("fm", "gif", {"format": Format.GIF}),
    ("fm", "auto", {"format": Format.AUTO}),
    ("q", "75", {"quality": 75}),
    ("quality", "75", {"quality": 75}),
    ("q", "1", {"quality": 1}),
    ("q", "100", {"quality": 100}),
    ("bg", "ff8000", {"background": (255, 128, 0, 255)}),
    ("bg", "FF8000", {"background": (255, 128, 0, 255)}),
    ("bg", "ff800080", {"background": (255, 128, 0, 128)}),
    ("bg", "00000000", {"background": (0, 0, 0, 0)}),
    ("bg", "#ffffff", {"background": (255, 255, 255, 255)}),
    ("crop", "10,20,300,200", {"crop": Rect(10, 20, 300, 200)}),
    ("crop", "0,0,1,1", {"crop": Rect(0, 0, 1, 1)}),
    ("rot", "0", {"rotate": 0}),
    ("rot", "90", {"rotate": 90}),
    ("rot", "180", {"rotate": 180}),
    ("rotate", "270", {"rotate": 270}),
    ("rotate", "90", {"rotate": 90}),
    ("flip", "h", {"flip": Flip.H}),
    ("flip", "v", {"flip": Flip.V}),
    ("flip", "hv", {"flip": Flip.HV}),
]


def test_no_parameters_gives_the_documented_defaults() -> None:
    options = parse([])
    assert options.width is None and options.height is None
    assert options.fit is Fit.INSIDE
    assert options.gravity is Gravity.CENTER
    assert options.focal == (0.5, 0.5)
    assert options.dpr == 1.0
    assert options.enlarge is False
    assert options.format is Format.AUTO
    assert options.quality is None and options.background is None and options.crop is None
    assert options.rotate == 0
    assert options.flip is Flip.NONE
    assert options == Options()


@pytest.mark.parametrize(("name", "value", "expected"), VALID, ids=[f"{n}={v}" for n, v, _ in VALID])
def test_each_parameter_and_alias(name: str, value: str, expected: dict[str, Any]) -> None:
    options = parse([(name, value)])
    assert options == Options(**expected)


BRIEF_NAMES = ["w", "width", "h", "height", "resize", "fit", "g", "gravity", "fx", "fy", "dpr", "enlarge"]
BRIEF_NAMES += ["fm", "format", "q", "quality", "bg", "crop", "rot", "rotate", "flip"]


def test_the_table_covers_every_core_parameter_name_and_alias() -> None:
    assert set(BRIEF_NAMES) <= set(ALL_NAMES)
    assert {name for name, _, _ in VALID} == set(BRIEF_NAMES)


def test_every_documented_alias_exists() -> None:
    aliases = {param.name: set(param.aliases) for param in PARAMS}
    assert aliases["w"] == {"width"}
    assert aliases["h"] == {"height"}
    assert aliases["g"] == {"gravity"}
    assert aliases["fm"] == {"format"}
    assert aliases["q"] == {"quality"}
    assert aliases["rot"] == {"rotate"}


def test_a_full_query_string() -> None:
    query = "w=300&h=200&fit=cover&g=north&enlarge=1&fm=webp&q=70&bg=102030&crop=1,2,30,40&rot=90&flip=hv"
    assert parse_query(query) == Options(
        width=300,
        height=200,
        fit=Fit.COVER,
        gravity=Gravity.NORTH,
        enlarge=True,
        format=Format.WEBP,
        quality=70,
        background=(0x10, 0x20, 0x30, 0xFF),
        crop=Rect(1, 2, 30, 40),
        rotate=90,
        flip=Flip.HV,
    )


# --- strictness ---


@pytest.mark.parametrize("name", ["foo", "W", "Width", "wdith", "size", "w ", " w", "fit[]", "", "crop.x", "\uff57"])
def test_unknown_parameter_is_refused_by_name(name: str) -> None:
    error = assert_bad([(name, "1")], name)
    assert "unknown" in error.detail


def test_unknown_parameter_is_refused_even_after_valid_ones() -> None:
    assert_bad([("w", "100"), ("h", "100"), ("nope", "1")], "nope")


@pytest.mark.parametrize(
    ("first", "second"),
    [(a, b) for param in PARAMS if param.name in BRIEF_NAMES for a in param.names for b in param.names],
    ids=lambda n: n,
)
def test_a_parameter_given_twice_is_refused_also_through_an_alias(first: str, second: str) -> None:
    value = {"w": "10", "h": "10", "resize": "10x10", "fit": "cover", "g": "north", "fx": "0.5", "fy": "0.5"}
    value |= {"dpr": "2", "enlarge": "1", "fm": "png", "q": "50", "bg": "ffffff", "crop": "0,0,5,5"}
    value |= {"rot": "90", "flip": "h"}
    canonical = next(param.name for param in PARAMS if first in param.names)
    error = assert_bad([(first, value[canonical]), (second, value[canonical])], second)
    assert "more than once" in error.detail


def test_width_then_alias_with_different_values_is_refused() -> None:
    assert_bad([("w", "1"), ("width", "2")], "width")
    assert_bad([("height", "1"), ("h", "2")], "h")
    with pytest.raises(BadParameter):
        parse_query("w=1&width=2")


@pytest.mark.parametrize("name", ALL_NAMES)  # every parameter, not only the core ones
def test_an_empty_value_is_refused(name: str) -> None:
    error = assert_bad([(name, "")], name)
    assert "empty" in error.detail


@pytest.mark.parametrize("query", ["w=", "w", "w=&h=10", "fit=", "bg="])
def test_an_empty_value_in_a_query_string_is_refused(query: str) -> None:
    with pytest.raises(BadParameter) as info:
        parse_query(query)
    assert info.value.extra["param"] == query.split("=", maxsplit=1)[0]


# non-ASCII look-alikes: \uff15 is a fullwidth 5, \u0665 an Arabic-Indic 5, \u0661 an Arabic-Indic 1
INT_GARBAGE = [
    "-1",
    "0",
    "-0",
    "1.5",
    "5.0",
    "+5",
    " 5",
    "5 ",
    "5\n",
    "\uff15",
    "\u0665",
    "1e3",
    "0x10",
    "1_000",
    "abc",
]
INT_GARBAGE += ["99999999999", "9" * 40, "NaN", "inf", "10px", "1,2"]

MALFORMED: list[tuple[str, str]] = [
    *[(name, value) for name in ("w", "width", "h", "height", "q", "quality") for value in INT_GARBAGE],
    ("w", "8193"),
    ("h", "8193"),
    ("q", "101"),
    *[(name, value) for name in ("dpr", "fx", "fy") for value in ("nan", "NaN", "inf", "-inf", "Infinity", "abc")],
    *[
        (name, value)
        for name in ("dpr", "fx", "fy")
        for value in ("-1", "+1", " 1", "1 ", "1e0", "1,5", "\u0661", "2/3")
    ],
    ("dpr", "0"),
    ("dpr", "0.5"),
    ("dpr", "0.99"),
    ("dpr", "4.01"),
    ("dpr", "5"),
    ("dpr", "1" + "0" * 30),
    ("fx", "1.01"),
    ("fx", "-0.1"),
    ("fy", "2"),
    ("fit", "crop"),
    ("fit", "insid"),
    ("fit", "inside "),
    ("fit", "1"),
    ("g", "up"),
    ("g", "centre"),
    ("g", "north-east"),
    ("gravity", "nowhere"),
    ("fm", "tiff"),
    ("fm", "jpe"),
    ("fm", "image/png"),
    ("format", "bmp"),
    ("enlarge", "2"),
    ("enlarge", "-1"),
    ("enlarge", "yes"),
    ("enlarge", "\uff11"),
    ("bg", "fff"),
    ("bg", "gggggg"),
    ("bg", "ff00ff0"),
    ("bg", "ff00ff00ff"),
    ("bg", "rgb(1,2,3)"),
    ("bg", "##ffffff"),
    ("bg", "\uff46\uff46\uff46\uff46\uff46\uff46"),
    ("crop", "1,2,3"),
    ("crop", "1,2,3,4,5"),
    ("crop", "-1,0,10,10"),
    ("crop", "0,0,0,10"),
    ("crop", "0,0,10,0"),
    ("crop", "0,0,1.5,10"),
    ("crop", "a,b,c,d"),
    ("crop", "0, 0, 10, 10"),
    ("crop", "0,0,10,99999999999"),
    ("crop", "0,0,\uff110,10"),
    ("rot", "45"),
    ("rot", "360"),
    ("rot", "-90"),
    ("rot", "90.0"),
    ("rotate", "+90"),
    ("flip", "x"),
    ("flip", "hh"),
    ("flip", "vh "),
    ("resize", "100"),
    ("resize", "x"),
    ("resize", "0x100"),
    ("resize", "100x0"),
    ("resize", "100*100"),
    ("resize", "-1x100"),
    ("resize", "8193x1"),
    ("resize", "1x8193"),
    ("resize", "100x100x100"),
    ("resize", "1.5x2"),
    ("resize", "\uff15x5"),
    ("resize", "99999999999x"),
]


@pytest.mark.parametrize(("name", "value"), MALFORMED, ids=[f"{n}={v!r}" for n, v in MALFORMED])
def test_malformed_or_out_of_range_values_are_refused_by_name(name: str, value: str) -> None:
    error = assert_bad([(name, value)], name)
    assert "must be" in error.detail


# --- limits ---


@pytest.mark.parametrize(("name", "limit"), [("w", 8192), ("width", 8192), ("h", 8192), ("height", 8192)])
def test_sizes_up_to_the_limit_pass_and_above_are_a_400(name: str, limit: int) -> None:
    assert parse([(name, str(limit))]) != Options()
    assert_bad([(name, str(limit + 1))], name)


def test_limits_come_from_the_limits_object() -> None:
    small = Limits(max_width=100, max_height=50)
    assert parse([("w", "100"), ("h", "50")], small) == Options(width=100, height=50)
    assert_bad([("w", "101")], "w", small)
    assert_bad([("h", "51")], "h", small)
    assert parse([("resize", "100x50")], small) == Options(width=100, height=50)
    assert_bad([("resize", "101x1")], "resize", small)
    assert_bad([("resize", "x51")], "resize", small)


# --- combinations ---


@pytest.mark.parametrize(
    "items",
    [
        [("resize", "10x10"), ("w", "5")],
        [("w", "5"), ("resize", "10x10")],
        [("resize", "10x"), ("h", "5")],
        [("resize", "x10"), ("width", "5")],
        [("height", "5"), ("resize", "10x10")],
    ],
)
def test_resize_combined_with_w_or_h_is_a_400(items: Items) -> None:
    with pytest.raises(BadParameter) as info:
        parse(items)
    assert info.value.status == 400
    assert info.value.extra["param"] in {name for name, _ in items}


def test_fx_and_fy_imply_focal_gravity() -> None:
    assert parse([("fx", "0.25"), ("fy", "0.75")]) == Options(gravity=Gravity.FOCAL, focal=(0.25, 0.75))
    assert parse([("g", "focal"), ("fx", "0.25")]) == Options(gravity=Gravity.FOCAL, focal=(0.25, 0.5))
    assert parse([("fy", "0.1"), ("gravity", "focal")]) == Options(gravity=Gravity.FOCAL, focal=(0.5, 0.1))
    assert parse([("g", "focal")]).gravity is Gravity.FOCAL


@pytest.mark.parametrize("gravity", [g for g in Gravity if g is not Gravity.FOCAL])
@pytest.mark.parametrize("focal", ["fx", "fy"])
@pytest.mark.parametrize("g_first", [True, False])
def test_a_compass_gravity_with_a_focal_point_is_a_400(gravity: Gravity, focal: str, g_first: bool) -> None:
    items = [("g", gravity.value), (focal, "0.3")]
    with pytest.raises(BadParameter) as info:
        parse(items if g_first else items[::-1])
    assert info.value.status == 400
    assert info.value.extra["param"] in {"g", focal}


@pytest.mark.parametrize("name", ["fm", "format"])
def test_avif_is_refused_when_disabled(name: str) -> None:
    no_avif = Limits(avif=False)
    error = assert_bad([(name, "avif")], name, no_avif)
    assert "avif" in error.detail
    assert parse([(name, "avif")], Limits(avif=True)).format is Format.AVIF
    for fmt in ("jpeg", "jpg", "png", "webp", "gif", "auto"):
        assert parse([(name, fmt)], no_avif).format is not Format.AVIF


# --- through HTTP: every refusal above is a 400 problem naming the parameter ---


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("w=8193", "w"),
        ("h=9000", "h"),
        ("w=1&width=2", "width"),
        ("resize=10x10&w=5", "resize"),
        ("bogus=1", "bogus"),
        ("w=", "w"),
        ("dpr=nan", "dpr"),
    ],
)
def test_refusals_are_http_400_naming_the_parameter(client: TestClient, query: str, param: str) -> None:
    response = client.get(f"/img/chelsea.png?{query}")
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == 400
    assert body["param"] == param


# --- apply_dpr ---


def test_apply_dpr_is_identity_at_dpr_1() -> None:
    options = Options(width=300, height=200)
    assert apply_dpr(options, LIMITS) == options


@pytest.mark.parametrize(
    ("width", "height", "dpr", "expected"),
    [
        (100, None, 2.0, (200, None)),
        (None, 100, 3.0, (None, 300)),
        (100, 50, 2.0, (200, 100)),
        (101, 51, 1.5, (152, 77)),  # 151.5 and 76.5 round half-up
        (333, None, 1.5, (500, None)),  # 499.5
        (1, 1, 1.25, (1, 1)),  # 1.25 rounds down
    ],
)
def test_apply_dpr_multiplies_and_rounds_half_up(
    width: int | None, height: int | None, dpr: float, expected: tuple[int | None, int | None]
) -> None:
    folded = apply_dpr(Options(width=width, height=height, dpr=dpr), LIMITS)
    assert (folded.width, folded.height) == expected
    assert folded.dpr == 1.0


def test_apply_dpr_without_a_size_just_resets_dpr() -> None:
    folded = apply_dpr(Options(dpr=3.0, fit=Fit.COVER), LIMITS)
    assert folded == Options(fit=Fit.COVER)


def test_apply_dpr_keeps_other_options() -> None:
    options = parse([("w", "10"), ("dpr", "2"), ("fit", "cover"), ("fm", "png"), ("rot", "90"), ("g", "south")])
    folded = apply_dpr(options, LIMITS)
    assert folded == Options(width=20, fit=Fit.COVER, format=Format.PNG, rotate=90, gravity=Gravity.SOUTH)


@pytest.mark.parametrize(
    ("width", "height", "dpr", "expected"),
    [
        (8192, None, 4.0, (8192, None)),
        (None, 5000, 2.0, (None, 8192)),
        (5000, 2500, 2.0, (8192, 4096)),  # the width constrains; 2:1 kept
        (2500, 5000, 2.0, (4096, 8192)),
        (8192, 8192, 2.0, (8192, 8192)),
        (6000, 1000, 3.0, (8192, 1365)),  # 18000x3000 -> 8192 x 1365.33
    ],
)
def test_apply_dpr_scales_an_over_limit_size_down_keeping_the_aspect_ratio(
    width: int | None, height: int | None, dpr: float, expected: tuple[int | None, int | None]
) -> None:
    folded = apply_dpr(Options(width=width, height=height, dpr=dpr), LIMITS)
    assert (folded.width, folded.height) == expected


def test_apply_dpr_respects_unequal_limits() -> None:
    limits = Limits(max_width=1000, max_height=300)
    folded = apply_dpr(Options(width=400, height=200, dpr=2.0), limits)  # 800x400: the height constrains
    assert (folded.width, folded.height) == (600, 300)


@pytest.mark.parametrize(("width", "dpr", "expected"), [(25, "2.3", 58), (30, "2.05", 62), (50, "1.15", 58)])
def test_apply_dpr_rounds_exact_halves_up_for_decimal_dprs(width: int, dpr: str, expected: int) -> None:
    assert Fraction(width) * Fraction(dpr) == expected - Fraction(1, 2)
    folded = apply_dpr(parse([("w", str(width)), ("dpr", dpr)]), LIMITS)
    assert folded.width == expected


def decimal_text(thousandths: int) -> str:
    return f"{thousandths // 1000}.{thousandths % 1000:03d}"


@st.composite
def sizes_within_limits(draw: st.DrawFn) -> tuple[int | None, int | None, int, int]:
    max_width, max_height = draw(st.integers(1, 8192)), draw(st.integers(1, 8192))
    width = draw(st.none() | st.integers(1, max_width))
    height = draw(st.none() | st.integers(1, max_height))
    return width, height, max_width, max_height


@FAST
@given(case=sizes_within_limits(), dpr=st.integers(1000, 4000))
@example(case=(8192, 1, 8192, 8192), dpr=4000)
@example(case=(1, 8192, 8192, 8192), dpr=3999)
@example(case=(5000, 2500, 8192, 8192), dpr=2000)
def test_apply_dpr_property(case: tuple[int | None, int | None, int, int], dpr: int) -> None:
    """Sizes (already within the limits) times dpr: half-up, and scaled down into the limits keeping the aspect."""
    width, height, max_width, max_height = case
    limits = Limits(max_width=max_width, max_height=max_height)
    options = parse_options([("dpr", decimal_text(dpr))], limits)
    options = Options(width=width, height=height, dpr=options.dpr)
    folded = apply_dpr(options, limits)
    assert folded.dpr == 1.0
    assert (folded.width is None) == (width is None)
    assert (folded.height is None) == (height is None)
    exact_w = Fraction(width) * Fraction(dpr, 1000) if width else None
    exact_h = Fraction(height) * Fraction(dpr, 1000) if height else None
    shrink = min(
        Fraction(1),
        Fraction(max_width) / exact_w if exact_w else Fraction(1),
        Fraction(max_height) / exact_h if exact_h else Fraction(1),
    )
    for got, exact, limit in ((folded.width, exact_w, max_width), (folded.height, exact_h, max_height)):
        if exact is None:
            continue
        assert got is not None
        assert 1 <= got <= limit
        target = exact * shrink
        # Never off by more than rounding; exactly half-up except at exact .5 ties (see the xfail above).
        assert abs(got - target) <= Fraction(1, 2) or (got == 1 and target < 1)
        if target.denominator != 2:
            assert got == half_up(target)
    if exact_w and exact_h and shrink < 1:
        # one side lands on its limit, the aspect ratio is kept within rounding
        assert folded.width == max_width or folded.height == max_height


# --- property: fuzzing never raises anything but BadParameter ---

SAMPLE_VALUES = [
    "",
    "0",
    "1",
    "-1",
    "100",
    "8192",
    "8193",
    "0.5",
    "2",
    "nan",
    "inf",
    "1e3",
    "\uff15",
    "100x100",
    "x",
    "x100",
    "100x",
    "cover",
    "focal",
    "north",
    "jpg",
    "avif",
    "ffffff",
    "ff00ff00",
    "1,2,3,4",
    "0,0,0,0",
    "90",
    "hv",
    "true",
]
VALUES = st.one_of(
    st.sampled_from(SAMPLE_VALUES),
    st.text(max_size=12),
    st.from_regex(r"[-+ ]?[0-9]{0,12}(\.[0-9]{0,8})?(x[0-9]{0,6})?", fullmatch=True),
    st.integers().map(str),
    st.floats().map(str),
    st.lists(st.integers(-5, 100000), min_size=0, max_size=6).map(lambda xs: ",".join(map(str, xs))),
)
NAMES = st.one_of(st.sampled_from(ALL_NAMES), st.text(max_size=8))


def check_parsed(options: Options, names: set[str], limits: Limits) -> None:
    """Invariants of anything the parser accepts."""
    assert isinstance(options, Options)
    assert options.width is None or 1 <= options.width <= limits.max_width
    assert options.height is None or 1 <= options.height <= limits.max_height
    assert 1.0 <= options.dpr <= 4.0 and math.isfinite(options.dpr)
    assert all(0.0 <= f <= 1.0 and math.isfinite(f) for f in options.focal)
    assert options.quality is None or 1 <= options.quality <= 100
    assert options.rotate in (0, 90, 180, 270)
    assert options.crop is None or (options.crop.width >= 1 and options.crop.height >= 1)
    if names & {"fx", "fy"}:
        assert options.gravity is Gravity.FOCAL
    if not limits.avif:
        assert options.format is not Format.AVIF


@FAST
@given(items=st.lists(st.tuples(NAMES, VALUES), max_size=8), avif=st.booleans())
def test_any_query_parses_or_raises_bad_parameter(items: Items, avif: bool) -> None:
    limits = Limits(avif=avif)
    try:
        options = parse_options(items, limits)
    except BadParameter as error:
        assert error.status == 400
        assert error.extra["param"] in {name for name, _ in items}  # it names something the client sent
    else:
        check_parsed(options, {name for name, _ in items}, limits)


@FAST
@given(query=st.text(max_size=60))
@example(query="w=1&width=2")
@example(query="w=%EF%BC%95")
@example(query="&&&=&==")
def test_any_raw_query_string_parses_or_raises_bad_parameter(query: str) -> None:
    items = parse_qsl(query, keep_blank_values=True)
    try:
        options = parse_options(items, LIMITS)
    except BadParameter as error:
        assert error.status == 400
        assert error.extra["param"] in {name for name, _ in items}
    else:
        check_parsed(options, {name for name, _ in items}, LIMITS)


# --- property: any valid combination round-trips ---


Option = tuple[str, str, str, Any]  # query name, query value, Options field, expected value


def option(names: tuple[str, ...], field: str, values: st.SearchStrategy[tuple[str, Any]]) -> st.SearchStrategy[Any]:
    """Absent, or given under any of its names as (text, expected value)."""
    return st.none() | st.tuples(st.sampled_from(names), values).map(lambda t: (t[0], t[1][0], field, t[1][1]))


def colour(channels: list[int], upper: bool) -> tuple[str, tuple[int, ...]]:
    text = "".join(f"{c:02x}" for c in channels)
    return (text.upper() if upper else text, (*channels, 255) if len(channels) == 3 else tuple(channels))


FORMAT_TEXTS = [("auto", Format.AUTO), ("jpeg", Format.JPEG), ("jpg", Format.JPEG), ("png", Format.PNG)]
FORMAT_TEXTS += [("webp", Format.WEBP), ("avif", Format.AVIF), ("gif", Format.GIF)]
CROP_NUMBERS = st.tuples(*[st.integers(0, 10**6)] * 2, *[st.integers(1, 10**6)] * 2)
SIMPLE_OPTIONS = [
    option(("fit",), "fit", st.sampled_from(Fit).map(lambda f: (f.value, f))),
    option(("dpr",), "dpr", st.integers(1000, 4000).map(lambda n: (decimal_text(n), n / 1000))),
    option(("enlarge",), "enlarge", st.booleans().map(lambda b: (str(int(b)), b))),
    option(("fm", "format"), "format", st.sampled_from(FORMAT_TEXTS)),
    option(("q", "quality"), "quality", st.integers(1, 100).map(lambda n: (str(n), n))),
    option(
        ("bg",), "background", st.builds(colour, st.lists(st.integers(0, 255), min_size=3, max_size=4), st.booleans())
    ),
    option(("crop",), "crop", CROP_NUMBERS.map(lambda t: (",".join(map(str, t)), Rect(*t)))),
    option(("rot", "rotate"), "rotate", st.sampled_from([0, 90, 180, 270]).map(lambda r: (str(r), r))),
    option(("flip",), "flip", st.sampled_from([Flip.H, Flip.V, Flip.HV]).map(lambda f: (f.value, f))),
]


@st.composite
def size_options(draw: st.DrawFn) -> tuple[Items, dict[str, Any]]:
    width = draw(st.none() | st.integers(1, LIMITS.max_width))
    height = draw(st.none() | st.integers(1, LIMITS.max_height))
    if (width or height) and draw(st.booleans()):
        items = [("resize", f"{width or ''}x{height or ''}")]
    else:
        items = [
            (draw(st.sampled_from(names)), str(v))
            for names, v in ((("w", "width"), width), (("h", "height"), height))
            if v
        ]
    return items, {"width": width, "height": height}


@st.composite
def gravity_options(draw: st.DrawFn) -> tuple[Items, dict[str, Any]]:
    g_name = draw(st.sampled_from(["g", "gravity"]))
    fx = draw(st.none() | st.integers(0, 1000))
    fy = draw(st.none() | st.integers(0, 1000))
    if fx is None and fy is None:
        gravity = draw(st.none() | st.sampled_from(Gravity))
        return ([(g_name, gravity.value)], {"gravity": gravity}) if gravity else ([], {})
    items = [(name, decimal_text(value)) for name, value in (("fx", fx), ("fy", fy)) if value is not None]
    if draw(st.booleans()):
        items.append((g_name, "focal"))
    focal = (0.5 if fx is None else fx / 1000, 0.5 if fy is None else fy / 1000)
    return items, {"gravity": Gravity.FOCAL, "focal": focal}


@st.composite
def valid_queries(draw: st.DrawFn) -> tuple[Items, Options]:
    """A valid query in any order and through any alias, and the Options it must parse to."""
    items, expected = draw(size_options())
    gravity_items, gravity_fields = draw(gravity_options())
    items += gravity_items
    expected |= gravity_fields
    for strategy in SIMPLE_OPTIONS:
        chosen: Option | None = draw(strategy)
        if chosen is not None:
            name, text, field, value = chosen
            items.append((name, text))
            expected[field] = value
    return draw(st.permutations(items)), Options(**expected)


@FAST
@given(case=valid_queries())
def test_any_valid_combination_round_trips(case: tuple[Items, Options]) -> None:
    items, expected = case
    assert parse_options(items, LIMITS) == expected
    assert parse_query(urlencode(items)) == expected  # also through URL encoding
