"""`/srcset/{path}` (fluid ladders, fixed 1x/2x/3x, markup, signing) and client hints (`w=auto`, `dpr=auto`).

The key property throughout: a candidate's descriptor is the truth. Every candidate URL is fetched from
the same server and decoded, and the image must be exactly as wide as the answer says.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from starlette.testclient import TestClient

from imgproxy.settings import default_ladder
from imgproxy.signing import sign
from tests.conftest import assert_problem, decode

MakeClient = Callable[..., TestClient]

KEY = "k3y-0123456789abcdefXYZ"
LADDER = default_ladder()
LANDSCAPE = (1800, 1200)  # after EXIF orientation
CHELSEA = (451, 300)
DEFAULT_FLUID = [320, 480, 640, 768, 960, 1280, 1600, 1920, 2560]  # SrcsetSettings.widths
ACCEPT_CH = ["Sec-CH-DPR", "DPR", "Sec-CH-Width", "Width"]
WIDTH_HINTS = {"Sec-CH-Width", "Width"}
DPR_HINTS = {"Sec-CH-DPR", "DPR"}


# --- helpers ---


def snap_up(value: int, ladder: list[int] = LADDER) -> int:
    """The first ladder width at or above `value` (the top one past it)."""
    return next((width for width in ladder if width >= value), ladder[-1])


def largest_within(limit: int, ladder: list[int] = LADDER) -> int:
    return max(width for width in ladder if width <= limit)


def get_srcset(client: TestClient, query: str = "", path: str = "landscape.jpg") -> dict[str, Any]:
    response = client.get(f"/srcset/{path}" + (f"?{query}" if query else ""))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer: dict[str, Any] = response.json()
    return answer


def fetch_width(client: TestClient, url: str, media_type: str | None = None) -> int:
    response = client.get(url)
    assert response.status_code == 200, (url, response.text)
    if media_type is not None:
        assert response.headers["content-type"] == media_type, url
    return decode(response.content).width


def options_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


class Tags(HTMLParser):
    """Start tags with their (unescaped) attributes, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse_tags(snippet: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(snippet)
    parser.close()
    return parser.tags


def srcset_entries(value: str | None) -> list[tuple[str, str]]:
    """`url 640w, url 2x` as [(url, descriptor)]; the URLs carry no spaces or commas."""
    assert value
    entries = []
    for entry in value.split(", "):
        url, descriptor = entry.split(" ")
        entries.append((url, descriptor))
    return entries


def hinted(client: TestClient, query: str, **headers: str) -> Any:
    return client.get("/img/landscape.jpg?" + query, headers=headers)


def vary_of(response: Any) -> set[str]:
    return {name.strip() for name in response.headers.get("vary", "").split(",") if name.strip()}


# --- fluid ---


def test_fluid_candidates_are_ladder_widths_within_the_source(client: TestClient) -> None:
    answer = get_srcset(client)
    widths = [candidate["width"] for candidate in answer["candidates"]]
    assert widths == sorted(set(widths))
    assert all(width in LADDER and width <= LANDSCAPE[0] for width in widths)
    assert largest_within(LANDSCAPE[0]) in widths  # the full resolution the ladder holds
    expected = {snap_up(w) for w in DEFAULT_FLUID if snap_up(w) <= LANDSCAPE[0]} | {largest_within(LANDSCAPE[0])}
    assert widths == sorted(expected)
    assert [c["descriptor"] for c in answer["candidates"]] == [f"{w}w" for w in widths]


def test_every_fluid_candidate_is_exactly_as_wide_as_its_descriptor(client: TestClient) -> None:
    answer = get_srcset(client)
    for candidate in answer["candidates"]:
        assert candidate["descriptor"] == f"{candidate['width']}w"
        assert fetch_width(client, candidate["url"]) == candidate["width"], candidate


def test_srcset_string_lists_the_candidates(client: TestClient) -> None:
    answer = get_srcset(client)
    expected = [(c["url"], c["descriptor"]) for c in answer["candidates"]]
    assert srcset_entries(answer["srcset"]) == expected
    assert answer["srcset"] == ", ".join(f"{c['url']} {c['width']}w" for c in answer["candidates"])
    assert answer["src"] in [c["url"] for c in answer["candidates"]]


def test_sizes_defaults_to_100vw_and_echoes_a_given_one(client: TestClient) -> None:
    assert get_srcset(client)["sizes"] == "100vw"
    sizes = "(max-width: 600px) 100vw, 600px"
    answer = client.get("/srcset/landscape.jpg", params={"sizes": sizes}).json()
    assert answer["sizes"] == sizes
    tags = parse_tags(answer["html"]["picture"])
    assert [attrs["sizes"] for tag, attrs in tags if tag in ("source", "img")] == [sizes] * 3


@pytest.mark.parametrize(
    ("path", "size", "ratio"),
    [("landscape.jpg", LANDSCAPE, "3/2"), ("chelsea.png", CHELSEA, "451/300"), ("astronaut.png", (512, 512), "1/1")],
)
def test_intrinsic_size_and_aspect_ratio(client: TestClient, path: str, size: tuple[int, int], ratio: str) -> None:
    answer = get_srcset(client, path=path)
    assert answer["intrinsic"] == {"width": size[0], "height": size[1]}
    assert answer["aspect_ratio"] == ratio
    assert Fraction(answer["width"], answer["height"]) == pytest.approx(Fraction(*size), rel=0.01)


def test_custom_widths_are_snapped_onto_the_ladder(client: TestClient) -> None:
    answer = get_srcset(client, "widths=320,640")
    widths = [c["width"] for c in answer["candidates"]]
    assert widths == [snap_up(320), snap_up(640), largest_within(LANDSCAPE[0])]
    # Past the source: dropped (never upscaled), the full resolution stays.
    answer = get_srcset(client, "widths=5000", path="chelsea.png")
    assert [c["width"] for c in answer["candidates"]] == [largest_within(CHELSEA[0])]


def test_fluid_candidates_follow_a_configured_ladder(make_client: MakeClient) -> None:
    ladder = [100, 300, 600, 1200, 2400]
    client = make_client(limits={"ladder_widths": ladder}, srcset={"widths": [250, 700, 2000]})
    answer = get_srcset(client)
    assert [c["width"] for c in answer["candidates"]] == [300, 1200]  # 2000 → 2400 is wider than the source
    for candidate in answer["candidates"]:
        assert fetch_width(client, candidate["url"]) == candidate["width"]


@pytest.mark.parametrize("mode", ["snap", "strict"])
def test_fluid_candidates_are_served_as_described_under_a_ladder_mode(make_client: MakeClient, mode: str) -> None:
    client = make_client(limits={"ladder": mode})
    answer = get_srcset(client, path="chelsea.png")
    for candidate in answer["candidates"]:
        assert fetch_width(client, candidate["url"]) == candidate["width"], candidate


# --- markup ---


def test_img_snippet_has_size_attributes_and_a_candidate_src(client: TestClient) -> None:
    answer = get_srcset(client)
    [(tag, attrs)] = parse_tags(answer["html"]["img"])
    assert tag == "img"
    width, height = int(attrs["width"] or 0), int(attrs["height"] or 0)
    assert (width, height) == (answer["width"], answer["height"])
    assert abs(width / height - 1.5) < 0.01  # no layout shift: the box has the image's shape
    urls = [c["url"] for c in answer["candidates"]]
    assert attrs["src"] in urls
    assert srcset_entries(attrs["srcset"]) == [(c["url"], c["descriptor"]) for c in answer["candidates"]]
    assert attrs["sizes"] == "100vw"
    assert attrs["loading"] == "lazy"
    assert attrs["decoding"] == "async"


def test_picture_snippet_offers_avif_and_webp_sources(client: TestClient) -> None:
    answer = get_srcset(client)
    tags = parse_tags(answer["html"]["picture"])
    assert [tag for tag, _ in tags] == ["picture", "source", "source", "img"]
    sources = {str(attrs["type"]): attrs for tag, attrs in tags if tag == "source"}
    assert set(sources) == {"image/avif", "image/webp"}
    widths = [c["width"] for c in answer["candidates"]]
    for media_type, attrs in sources.items():
        entries = srcset_entries(attrs["srcset"])
        assert [descriptor for _, descriptor in entries] == [f"{w}w" for w in widths]
        for (url, _), width in zip(entries, widths, strict=True):
            assert options_of(url) == {"w": str(width), "fm": media_type.removeprefix("image/")}
    img = tags[-1][1]
    assert (img["width"], img["height"]) == (str(answer["width"]), str(answer["height"]))
    # One source of each type, fetched: the type and width it claims.
    for media_type, attrs in sources.items():
        url, descriptor = srcset_entries(attrs["srcset"])[0]
        assert fetch_width(client, url, media_type) == int(descriptor.removesuffix("w"))


def test_snippet_attributes_are_html_escaped(client: TestClient) -> None:
    alt = 'Tom & "Jerry" <b>'
    response = client.get("/srcset/chelsea.png", params={"fm": "webp", "q": "70", "alt": alt})
    answer = response.json()
    for snippet in answer["html"].values():
        assert "&amp;" in snippet
        assert "<b>" not in snippet and '"Jerry"' not in snippet
        assert "?fm=webp&q" not in snippet  # every & of a URL is written &amp;
    tags = parse_tags(answer["html"]["picture"])
    img = tags[-1][1]
    assert img["alt"] == alt
    assert img["src"] in [c["url"] for c in answer["candidates"]]  # unescaped by the parser: the real URL
    assert all(attrs["srcset"] and "&amp;" not in attrs["srcset"] for tag, attrs in tags if tag != "picture")


def test_img_snippet_has_an_empty_alt_by_default(client: TestClient) -> None:
    answer = get_srcset(client, path="chelsea.png")
    [(_, attrs)] = parse_tags(answer["html"]["img"])
    assert attrs.get("alt") == ""


# --- fixed size: 1x, 2x, 3x ---


def test_fixed_width_gives_dpr_candidates_with_falling_quality(client: TestClient) -> None:
    answer = get_srcset(client, "w=300")
    assert [c["descriptor"] for c in answer["candidates"]] == ["1x", "2x", "3x"]
    assert [c["width"] for c in answer["candidates"]] == [300, 600, 900]
    assert [options_of(c["url"]).get("q") for c in answer["candidates"]] == ["75", "50", "35"]
    assert [options_of(c["url"]).get("dpr", "1") for c in answer["candidates"]] == ["1", "2", "3"]
    assert srcset_entries(answer["srcset"]) == [(c["url"], c["descriptor"]) for c in answer["candidates"]]
    assert answer["sizes"] is None
    assert (answer["width"], answer["height"]) == (300, 200)
    [(_, attrs)] = parse_tags(answer["html"]["img"])
    assert (attrs["width"], attrs["height"]) == ("300", "200")
    assert "sizes" not in attrs
    assert attrs["src"] == answer["candidates"][0]["url"]
    for candidate in answer["candidates"]:
        assert fetch_width(client, candidate["url"]) == candidate["width"], candidate


def test_fixed_width_qualities_come_from_settings(make_client: MakeClient) -> None:
    client = make_client(srcset={"dpr_qualities": [90, 60]})
    answer = get_srcset(client, "w=200")
    assert [(c["descriptor"], options_of(c["url"])["q"]) for c in answer["candidates"]] == [("1x", "90"), ("2x", "60")]


def test_an_explicit_quality_wins_everywhere(client: TestClient) -> None:
    answer = get_srcset(client, "w=300&q=40")
    assert [options_of(c["url"])["q"] for c in answer["candidates"]] == ["40", "40", "40"]
    for tag, attrs in parse_tags(answer["html"]["picture"]):
        if tag != "picture":
            assert all(options_of(url)["q"] == "40" for url, _ in srcset_entries(attrs["srcset"]))
    fluid = get_srcset(client, "q=40")
    assert all(options_of(c["url"])["q"] == "40" for c in fluid["candidates"])


@pytest.mark.parametrize("query", ["w=300&quality=40", "format=webp", "w=300&format=webp"])
def test_option_aliases_are_passed_on(client: TestClient, query: str) -> None:
    answer = get_srcset(client, query, path="chelsea.png")
    for candidate in answer["candidates"]:
        assert fetch_width(client, candidate["url"]) > 0


def test_fixed_candidates_are_never_wider_than_the_source(client: TestClient) -> None:
    answer = get_srcset(client, "w=300", path="chelsea.png")
    for candidate in answer["candidates"]:
        assert candidate["width"] <= CHELSEA[0]
        assert fetch_width(client, candidate["url"]) == candidate["width"], candidate


@pytest.mark.parametrize("mode", ["snap", "strict"])
def test_fixed_candidates_are_served_as_described_under_a_ladder_mode(make_client: MakeClient, mode: str) -> None:
    client = make_client(limits={"ladder": mode})
    answer = get_srcset(client, "w=300")
    for candidate in answer["candidates"]:
        assert fetch_width(client, candidate["url"]) == candidate["width"], candidate


# --- options passed on, options refused, bad parameters ---


def test_options_are_passed_on_to_every_candidate(client: TestClient) -> None:
    for query in ("fm=webp", "w=200&fm=webp"):
        answer = get_srcset(client, query, path="chelsea.png")
        for candidate in answer["candidates"]:
            assert options_of(candidate["url"])["fm"] == "webp"
            assert fetch_width(client, candidate["url"], "image/webp") == min(candidate["width"], CHELSEA[0])


def test_effects_are_passed_on_and_keep_the_width(client: TestClient) -> None:
    answer = get_srcset(client, "grayscale=1&blur=2&flip=h&bg=ffffff", path="chelsea.png")
    for candidate in answer["candidates"]:
        assert options_of(candidate["url"]) == {
            "grayscale": "1",
            "blur": "2",
            "flip": "h",
            "bg": "ffffff",
            "w": str(candidate["width"]),
        }
        assert fetch_width(client, candidate["url"]) == candidate["width"]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("crop=0,0,100,100", "crop"),
        ("h=100", "h"),
        ("rot=90", "rot"),
        ("pad=10", "pad"),
        ("trim=10", "trim"),
        ("dpr=2", "dpr"),
        ("resize=100x100", "resize"),
        ("fit=cover", "fit"),
        ("fm=blurhash", "fm"),
        ("width=300", "width"),
    ],
)
def test_options_that_would_change_the_width_are_refused(client: TestClient, query: str, param: str) -> None:
    body = assert_problem(client.get("/srcset/chelsea.png?" + query), 400)
    assert body["param"] == param
    assert param in body["detail"]


def test_a_malformed_passed_on_option_is_refused(client: TestClient) -> None:
    body = assert_problem(client.get("/srcset/chelsea.png?q=900"), 400)
    assert body["param"] == "q"


@pytest.mark.parametrize(
    "widths", ["abc", "0", "99999", ",".join(str(100 + i) for i in range(40)), "320,,640", "-320", "3e2", ""]
)
def test_bad_widths_are_refused(client: TestClient, widths: str) -> None:
    body = assert_problem(client.get("/srcset/chelsea.png", params={"widths": widths}), 400)
    assert body["param"] == "widths"


@pytest.mark.parametrize("width", ["0", "abc", "2731", "-1", "auto"])
def test_bad_fixed_width_is_refused(client: TestClient, width: str) -> None:
    body = assert_problem(client.get("/srcset/chelsea.png", params={"w": width}), 400)
    assert body["param"] == "w"


def test_a_missing_source_is_a_404_problem(client: TestClient) -> None:
    assert_problem(client.get("/srcset/no/such/image.png"), 404)
    assert_problem(client.get("/srcset/no-such.jpg?w=300"), 404)


def test_openapi_documents_srcset(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/srcset/{path}"]["get"]
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert {"path", "w", "widths", "sizes", "alt", "fm", "q"} <= names
    assert not names & {"crop", "h", "rot", "pad", "trim", "dpr", "resize", "fit"}
    w = next(p for p in operation["parameters"] if p["name"] == "w")
    assert w["schema"]["maximum"] == 8192 // 3
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/SrcsetAnswer")


# --- signing ---


def test_signed_server_refuses_an_unsigned_srcset(make_client: MakeClient) -> None:
    client = make_client(security={"signing_keys": [KEY]})
    assert_problem(client.get("/srcset/chelsea.png"), 403)
    assert_problem(client.get("/srcset/chelsea.png?w=200&s=AAAA"), 403)


@pytest.mark.parametrize("query", ["", "w=200&fm=webp"])
def test_signed_srcset_answers_signed_candidates(make_client: MakeClient, query: str) -> None:
    client = make_client(security={"signing_keys": [KEY]})
    target = sign("/srcset/chelsea.png" + (f"?{query}" if query else ""), KEY.encode())
    response = client.get(target)
    assert response.status_code == 200, response.text
    answer = response.json()
    for candidate in answer["candidates"]:
        url = candidate["url"]
        assert "&s=" in url and list(options_of(url))[-1] == "s"
        assert fetch_width(client, url) == min(candidate["width"], CHELSEA[0])
        tampered = url.replace(f"w={options_of(url)['w']}", f"w={int(options_of(url)['w']) + 1}")
        assert_problem(client.get(tampered), 403)
    # The picture's sources, whose fm was changed, are signed too.
    for tag, attrs in parse_tags(answer["html"]["picture"]):
        if tag == "source":
            url, _ = srcset_entries(attrs["srcset"])[0]
            assert client.get(url).status_code == 200, url


# --- client hints ---


def test_width_hint_is_snapped_up_onto_the_ladder(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True})
    for headers in ({"Sec-CH-Width": "333"}, {"Width": "333"}, {"Sec-CH-Width": "333.4"}):
        response = hinted(client, "w=auto", **headers)
        assert response.status_code == 200, response.text
        assert decode(response.content).width == snap_up(333), headers
    # Sec-CH-Width wins over the legacy Width.
    response = hinted(client, "w=auto", **{"Sec-CH-Width": "333", "Width": "999"})
    assert decode(response.content).width == snap_up(333)


def test_a_width_alias_can_be_auto(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True})
    response = hinted(client, "width=auto", **{"Sec-CH-Width": "700"})
    assert decode(response.content).width == snap_up(700)


def test_no_width_hint_falls_back_to_auto_width_snapped(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True})
    assert decode(hinted(client, "w=auto").content).width == snap_up(1280)
    client = make_client(http={"client_hints": True, "auto_width": 500})
    assert decode(hinted(client, "w=auto").content).width == snap_up(500)


def test_width_hints_follow_a_configured_ladder(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True}, limits={"ladder_widths": [100, 300, 600]})
    assert decode(hinted(client, "w=auto", Width="301").content).width == 600
    assert decode(hinted(client, "w=auto", Width="50").content).width == 100
    assert decode(hinted(client, "w=auto", Width="4000").content).width == 600  # the top of the ladder
    assert decode(hinted(client, "w=auto").content).width == 600  # auto_width 1280, over the top


def test_repeated_hinted_requests_follow_their_own_hint(make_client: MakeClient) -> None:
    """The remembered-transform fast path must key on the hint values too."""
    client = make_client(http={"client_hints": True})
    for _ in range(2):
        for hint, expected in (("333", snap_up(333)), ("700", snap_up(700))):
            response = hinted(client, "w=auto", **{"Sec-CH-Width": hint})
            assert decode(response.content).width == expected
            assert response.headers["accept-ch"] == ", ".join(ACCEPT_CH)
            assert vary_of(response) >= WIDTH_HINTS
    assert response.headers["x-cache"] == "HIT"


def test_dpr_hint_multiplies_an_explicit_width(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True})
    response = hinted(client, "dpr=auto&w=106", **{"Sec-CH-DPR": "2"})
    assert decode(response.content).width == 212
    assert decode(hinted(client, "dpr=auto&w=106", DPR="2").content).width == 212
    assert decode(hinted(client, "dpr=auto&w=106").content).width == 106  # no hint: 1x
    # 200 CSS px at DPR 2 is 400 device px, snapped up the ladder like every hinted size ("clamp to the
    # ladder": hint values are arbitrary, so each would otherwise be a cache entry of its own).
    assert decode(hinted(client, "dpr=auto&w=200", **{"Sec-CH-DPR": "2"}).content).width == snap_up(400)


def test_dpr_hint_result_is_snapped_when_the_ladder_applies(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True}, limits={"ladder": "snap"})
    response = hinted(client, "dpr=auto&w=200", **{"Sec-CH-DPR": "2"})
    assert decode(response.content).width == snap_up(400)


DPR_CLAMPS = [("9", 312), ("4", 312), ("3.999", 312), ("2", 156), ("1", 78), ("0.5", 78), ("0.001", 78)]
JUNK_HINTS = ["abc", "-5", "1e9", "0", "0.0", "999999", "3.5.6", " ", "2x", "NaN", "inf", "0x10"]


def test_dpr_hint_is_clamped_to_1_to_4(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True})
    for dpr, expected in DPR_CLAMPS:
        response = hinted(client, "dpr=auto&w=78", **{"Sec-CH-DPR": dpr})
        assert response.status_code == 200, response.text
        assert decode(response.content).width == expected, dpr


def test_junk_hints_are_ignored(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True})
    for junk in JUNK_HINTS:
        response = hinted(client, "w=auto", **{"Sec-CH-Width": junk, "Width": junk})
        assert response.status_code == 200, (junk, response.text)
        assert decode(response.content).width == snap_up(1280), junk
        response = hinted(client, "dpr=auto&w=106", **{"Sec-CH-DPR": junk, "DPR": junk})
        assert response.status_code == 200, (junk, response.text)
        assert decode(response.content).width == 106, junk


def test_accept_ch_and_vary_name_the_hints_used(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True})
    width_auto = hinted(client, "w=auto&fm=webp", **{"Sec-CH-Width": "333"})
    assert width_auto.headers["accept-ch"] == ", ".join(ACCEPT_CH)
    assert vary_of(width_auto) & (WIDTH_HINTS | DPR_HINTS) == WIDTH_HINTS
    dpr_auto = hinted(client, "dpr=auto&w=106&fm=webp", **{"Sec-CH-DPR": "2"})
    assert vary_of(dpr_auto) & (WIDTH_HINTS | DPR_HINTS) == DPR_HINTS
    # Both auto: the width hint is already in device pixels, so only it is used.
    both = hinted(client, "w=auto&dpr=auto&fm=webp", **{"Sec-CH-Width": "333", "Sec-CH-DPR": "2"})
    assert decode(both.content).width == snap_up(333)
    assert vary_of(both) & (WIDTH_HINTS | DPR_HINTS) == WIDTH_HINTS
    # No auto: Accept-CH still invites the hints, but the response does not vary on them.
    plain = hinted(client, "w=300&fm=webp", **{"Sec-CH-Width": "333", "Sec-CH-DPR": "2"})
    assert decode(plain.content).width == 300
    assert plain.headers["accept-ch"] == ", ".join(ACCEPT_CH)
    assert not vary_of(plain) & (WIDTH_HINTS | DPR_HINTS)


def test_a_304_keeps_vary_on_the_hints(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True})
    first = hinted(client, "w=auto", **{"Sec-CH-Width": "333"})
    again = client.get(
        "/img/landscape.jpg?w=auto", headers={"Sec-CH-Width": "333", "If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    assert vary_of(again) == vary_of(first)  # Vary is one of the headers a 304 must repeat (RFC 9110)
    other = client.get(
        "/img/landscape.jpg?w=auto", headers={"Sec-CH-Width": "700", "If-None-Match": first.headers["etag"]}
    )
    assert other.status_code == 200  # another hinted width is another representation
    assert decode(other.content).width == snap_up(700)


def test_hints_are_off_by_default(client: TestClient) -> None:
    for query in ("w=auto", "dpr=auto&w=200"):
        response = client.get("/img/landscape.jpg?" + query, headers={"Sec-CH-Width": "333", "Sec-CH-DPR": "2"})
        body = assert_problem(response, 400)
        assert body["param"] in ("w", "dpr")
        assert "accept-ch" not in response.headers
    response = client.get("/img/landscape.jpg?w=300", headers={"Sec-CH-Width": "333"})
    assert response.status_code == 200
    assert "accept-ch" not in response.headers
    assert not vary_of(response) & (WIDTH_HINTS | DPR_HINTS)
    assert decode(response.content).width == 300


def test_srcset_takes_no_auto_width(make_client: MakeClient) -> None:
    client = make_client(http={"client_hints": True})
    body = assert_problem(client.get("/srcset/chelsea.png?w=auto", headers={"Sec-CH-Width": "333"}), 400)
    assert body["param"] == "w"
