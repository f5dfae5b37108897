"""`Accept` negotiation: q-values, exclusion by q=0, wildcards, case, whitespace, malformed and huge headers.

Rule (from the issue): parse Accept properly (q-values, q=0 excludes) and pick AVIF when named and enabled,
else WebP when named, else legacy. Wildcards do not count as naming AVIF or WebP.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from imgproxy.negotiate import Bucket, accepted_types, negotiate, output_format
from imgproxy.options import Format

FAST = settings(max_examples=200, deadline=None)

CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
FIREFOX_OLD = "image/webp,*/*"
FIREFOX = "image/avif,image/webp,*/*"
SAFARI_OLD = "image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"
SAFARI = (
    "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/svg+xml,*/*;q=0.5"
)
CURL = "*/*"


# --- parsing ---


def test_accepted_types_reads_q_values() -> None:
    assert accepted_types("image/avif,image/webp;q=0.9,*/*;q=0.8") == {
        "image/avif": 1.0,
        "image/webp": pytest.approx(0.9),
        "*/*": pytest.approx(0.8),
    }


def test_accepted_types_defaults_q_to_1() -> None:
    assert accepted_types("image/webp") == {"image/webp": 1.0}
    assert accepted_types("image/webp;level=1") == {"image/webp": 1.0}


def test_accepted_types_of_an_empty_header() -> None:
    assert accepted_types("") == {}
    assert accepted_types(" , ,, ") == {}


def test_accepted_types_keeps_the_highest_q_of_a_repeated_type() -> None:
    assert accepted_types("image/webp;q=0.2, image/webp;q=0.7, image/webp;q=0") == {"image/webp": pytest.approx(0.7)}


def test_accepted_types_finds_q_among_other_parameters() -> None:
    assert accepted_types("image/webp;level=1;q=0.3;foo=bar") == {"image/webp": pytest.approx(0.3)}


# --- the buckets ---


@pytest.mark.parametrize(
    ("accept", "avif", "bucket"),
    [
        (CHROME, True, Bucket.AVIF),
        (CHROME, False, Bucket.WEBP),
        (FIREFOX, True, Bucket.AVIF),
        (FIREFOX, False, Bucket.WEBP),
        (FIREFOX_OLD, True, Bucket.WEBP),
        (SAFARI, True, Bucket.AVIF),
        (SAFARI_OLD, True, Bucket.LEGACY),
        (CURL, True, Bucket.LEGACY),
        ("image/avif", True, Bucket.AVIF),
        ("image/avif", False, Bucket.LEGACY),  # AVIF disabled and WebP not named
        ("image/webp", True, Bucket.WEBP),
        ("image/jpeg", True, Bucket.LEGACY),
        ("image/png,image/gif", True, Bucket.LEGACY),
        ("text/html", True, Bucket.LEGACY),
    ],
    ids=[
        *("chrome", "chrome-noavif", "firefox", "firefox-noavif", "firefox-old", "safari", "safari-old", "curl"),
        *("avif", "avif-disabled", "webp", "jpeg", "png-gif", "html"),
    ],
)
def test_common_headers(accept: str, avif: bool, bucket: Bucket) -> None:
    assert negotiate(accept, avif) is bucket


@pytest.mark.parametrize("accept", [None, ""])
@pytest.mark.parametrize("avif", [True, False])
def test_no_header_is_legacy(accept: str | None, avif: bool) -> None:
    assert negotiate(accept, avif) is Bucket.LEGACY


def test_avif_is_preferred_over_webp_whatever_the_q_values() -> None:
    """The rule picks AVIF whenever it is named (with q > 0) and enabled."""
    assert negotiate("image/avif;q=0.1,image/webp;q=1", True) is Bucket.AVIF
    assert negotiate("image/webp,image/avif;q=0.001", True) is Bucket.AVIF


@pytest.mark.parametrize("zero", ["0", "0.0", "0.00", "0.000", "-1", "-0.5"])
def test_q_zero_excludes(zero: str) -> None:
    assert negotiate(f"image/avif;q={zero},image/webp", True) is Bucket.WEBP
    assert negotiate(f"image/avif;q={zero},image/webp;q={zero}", True) is Bucket.LEGACY
    assert negotiate(f"image/webp;q={zero},*/*", True) is Bucket.LEGACY
    assert negotiate(f"*/*,image/avif;q={zero}", True) is Bucket.LEGACY


@pytest.mark.parametrize("small", ["0.001", "0.01", "0.5", "1", "1.0", "1.000"])
def test_any_positive_q_counts(small: str) -> None:
    assert negotiate(f"image/avif;q={small}", True) is Bucket.AVIF
    assert negotiate(f"image/webp;q={small}", True) is Bucket.WEBP


@pytest.mark.parametrize(
    "accept",
    [
        "*/*",
        "image/*",
        "*/*;q=1, image/*;q=1",
        "image/*,*/*;q=0.8",
        "*",
        "image/*;q=1.0",
        "IMAGE/*",
        "*/avif",
        "*/webp",
    ],
)
@pytest.mark.parametrize("avif", [True, False])
def test_wildcards_never_select_avif_or_webp(accept: str, avif: bool) -> None:
    assert negotiate(accept, avif) is Bucket.LEGACY


def test_a_wildcard_does_not_undo_an_exclusion() -> None:
    assert negotiate("image/*, image/avif;q=0, image/webp;q=0", True) is Bucket.LEGACY


@pytest.mark.parametrize(
    ("accept", "bucket"),
    [
        ("IMAGE/AVIF", Bucket.AVIF),
        ("Image/Avif", Bucket.AVIF),
        ("Image/WebP", Bucket.WEBP),
        ("image/avif;Q=0, image/webp", Bucket.WEBP),
        ("IMAGE/AVIF; Q=0, IMAGE/WEBP; Q=0", Bucket.LEGACY),
    ],
)
def test_case_insensitive(accept: str, bucket: Bucket) -> None:
    assert negotiate(accept, True) is bucket


@pytest.mark.parametrize(
    ("accept", "bucket"),
    [
        ("  image/webp  ", Bucket.WEBP),
        ("image/avif ; q=0 , image/webp", Bucket.WEBP),
        ("image/avif;q = 0,image/webp", Bucket.WEBP),
        ("image/avif\t;\tq=0\t,\timage/webp", Bucket.WEBP),
        (",,image/webp,,", Bucket.WEBP),
        ("text/html, , image/avif", Bucket.AVIF),
        ("image/webp;", Bucket.WEBP),
        ("image/webp;;q=0.5;", Bucket.WEBP),
    ],
)
def test_whitespace_and_empty_items(accept: str, bucket: Bucket) -> None:
    assert negotiate(accept, True) is bucket


@pytest.mark.parametrize("bad", ["abc", "", "high", "0.5.5", "1/2", "--1", "0x1", "q", "\U0001f642"])
def test_a_malformed_q_does_not_count_as_acceptance(bad: str) -> None:
    assert negotiate(f"image/avif;q={bad}", True) is Bucket.LEGACY
    assert negotiate(f"image/avif;q={bad},image/webp", True) is Bucket.WEBP


@pytest.mark.parametrize("bad", ["inf", "Infinity", "1e0", "1_0", "+1", "\u0661", "\u0660.\u0665"])
def test_non_rfc_q_values_do_not_count_as_acceptance(bad: str) -> None:
    """RFC 9110: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )."""
    assert negotiate(f"image/webp;q={bad}", True) is Bucket.LEGACY


def test_a_nan_q_is_not_acceptance() -> None:
    assert negotiate("image/webp;q=nan", True) is Bucket.LEGACY


def test_a_repeated_type_keeps_its_best_q_even_next_to_a_nan() -> None:
    assert negotiate("image/webp, image/webp;q=nan", True) is Bucket.WEBP


def test_q_above_1_does_not_break_anything() -> None:
    assert negotiate("image/webp;q=2", True) in (Bucket.WEBP, Bucket.LEGACY)
    assert accepted_types("image/webp;q=2")["image/webp"] <= 1.0


# --- long and many-item headers ---


def test_a_long_header_is_parsed_quickly() -> None:
    accept = ",".join(f"application/x-type-{i};q=0.{i % 10}" for i in range(20_000))  # ~600 kB
    start = time.perf_counter()
    assert negotiate(accept, True) is Bucket.LEGACY
    assert time.perf_counter() - start < 1.0


def test_a_long_header_naming_webp_first() -> None:
    accept = "image/webp," + ",".join(f"text/x-{i}" for i in range(10_000))
    assert negotiate(accept, True) is Bucket.WEBP


def test_a_huge_single_item_and_many_parameters() -> None:
    assert negotiate("image/webp;" + ";".join(f"p{i}=v" for i in range(10_000)), True) is Bucket.WEBP
    assert negotiate("x" * 100_000, True) is Bucket.LEGACY
    assert negotiate("image/webp;q=" + "0" * 10_000, True) is Bucket.LEGACY


def test_many_items_of_browser_length_are_all_read() -> None:
    """Real browsers send fewer than 20 items; up to 40 are read in full."""
    filler = [f"image/x-{i}" for i in range(39)]
    assert negotiate(",".join([*filler, "image/avif"]), True) is Bucket.AVIF
    assert negotiate(",".join([*filler, "image/webp"]), False) is Bucket.WEBP


# --- output_format ---


@pytest.mark.parametrize("bucket", list(Bucket))
@pytest.mark.parametrize("requested", [f for f in Format if f is not Format.AUTO])
def test_an_explicit_format_always_wins(requested: Format, bucket: Bucket) -> None:
    assert output_format(requested, bucket) is requested


@pytest.mark.parametrize(
    ("bucket", "fmt"), [(Bucket.AVIF, Format.AVIF), (Bucket.WEBP, Format.WEBP), (Bucket.LEGACY, Format.AUTO)]
)
def test_auto_follows_the_bucket(bucket: Bucket, fmt: Format) -> None:
    """AUTO stays AUTO for legacy: JPEG or PNG is decided by alpha after decoding."""
    assert output_format(Format.AUTO, bucket) is fmt


# --- properties ---

TYPES = ["image/avif", "image/webp", "image/png", "image/jpeg", "image/*", "*/*", "text/html", "image/apng"]


ITEMS = st.tuples(
    st.sampled_from(TYPES),
    st.sampled_from([str.lower, str.upper, str.title, str.swapcase]),
    st.sampled_from(["", " ", "  ", "\t"]),
    st.none() | st.integers(0, 1000),
    st.sampled_from(["q", "Q"]),
)


def accept_header(items: list[tuple[str, Callable[[str], str], str, int | None, str]]) -> tuple[str, dict[str, int]]:
    """A well-formed Accept header (random case, spacing and q), and each named type's best q in thousandths."""
    parts: list[str] = []
    best: dict[str, int] = {}
    for media, case, space, q, q_name in items:
        part = f"{space}{case(media)}{space}"
        if q is not None:
            text = "1" if q == 1000 else f"0.{q:03d}"
            part += f";{space}{q_name}{space}={space}{text}"
        parts.append(part)
        best[media] = max(best.get(media, 0), 1000 if q is None else q)
    return ",".join(parts), best


@FAST
@given(header=st.lists(ITEMS, max_size=10).map(accept_header), avif=st.booleans())
@example(header=("image/avif;q=0,image/webp;q=0.001", {"image/avif": 0, "image/webp": 1}), avif=True)
def test_negotiation_follows_the_rule(header: tuple[str, dict[str, int]], avif: bool) -> None:
    accept, best = header
    if avif and best.get("image/avif", 0) > 0:
        expected = Bucket.AVIF
    elif best.get("image/webp", 0) > 0:
        expected = Bucket.WEBP
    else:
        expected = Bucket.LEGACY
    assert negotiate(accept, avif) is expected


@FAST
@given(accept=st.text(max_size=200), avif=st.booleans())
@example(accept="image/webp;q=", avif=True)
@example(accept=";;;,,,===", avif=True)
def test_any_header_gives_a_bucket(accept: str, avif: bool) -> None:
    bucket = negotiate(accept, avif)
    assert isinstance(bucket, Bucket)
    if not avif:
        assert bucket is not Bucket.AVIF
    types = accepted_types(accept)
    assert all(0.0 <= q <= 1.0 for q in types.values() if not math.isnan(q))


@FAST
@given(
    wildcards=st.lists(st.sampled_from(["*/*", "image/*", "IMAGE/*", "*/*;q=0.9", "image/*;q=1"]), min_size=1),
    others=st.lists(st.sampled_from(["image/png", "image/jpeg", "text/html", "image/gif;q=0.5"])),
    avif=st.booleans(),
)
def test_wildcards_and_other_types_never_select_avif_or_webp(
    wildcards: list[str], others: list[str], avif: bool
) -> None:
    assert negotiate(",".join(wildcards + others), avif) is Bucket.LEGACY
