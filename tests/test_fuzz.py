"""Property-based fuzzing (hypothesis) of the request parser and of the image pipeline.

Parser: random query strings (every parameter name and alias, control parameters and junk; values of junk,
unicode, huge numbers), raw request paths (percent-encoding tricks, %2e%2e, %00, overlong UTF-8, unicode
normalisation, 10k-character paths) and headers (Accept, If-None-Match, client hints, Save-Data) go
through the in-process ASGI app exactly as uvicorn would hand them over: never a 500, errors are always
problem+json, and nothing outside the source root is ever served.

Pipeline: mutated bytes of corpus images (bit flips, overwrites, truncations, duplicated and deleted
chunks; PNG CRCs fixed half the time so mutations reach the decoder) through decode → transform → encode
(`imgproxy.pipeline.render.render`, settings' defaults): the result is an image that decodes to the size
reported, or an `ImageProxyError` with a 4xx status. Anything else is a bug.

Bounded for CI and deterministic (`derandomize`); longer runs (see SECURITY.md):

    IMGPROXY_FUZZ_EXAMPLES=20000 IMGPROXY_PARSER_EXAMPLES=5000 IMGPROXY_FUZZ_RANDOM=1 \\
        .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import io
import logging
import os
import struct
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.errors import BadParameter, ImageProxyError
from imgproxy.options import PARAMS, Format, Limits, Options, parse_options
from imgproxy.pipeline.render import RenderContext, Rendered, render
from imgproxy.settings import SAMPLES_DIR, Settings
from tests.hostile import report

PIPELINE_EXAMPLES = int(os.environ.get("IMGPROXY_FUZZ_EXAMPLES", "300"))
PARSER_EXAMPLES = int(os.environ.get("IMGPROXY_PARSER_EXAMPLES", "200"))
DERANDOMIZE = os.environ.get("IMGPROXY_FUZZ_RANDOM", "") != "1"
CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"  # ../shared beside the repo
REPO_IMAGES = Path(__file__).parent / "images"
PROBLEM = "application/problem+json"
SECRET_SIZE = (7, 3)  # the file outside the root: a response of this size would be a leak
STATS: Counter[str] = Counter()


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=DERANDOMIZE,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


# --- the app, driven as uvicorn would drive it -----------------------------------------------------------


@pytest.fixture(scope="module")
def jail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with small images, next to a secret that must never be served."""
    base = tmp_path_factory.mktemp("jail")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", SECRET_SIZE, (255, 0, 255)).save(base / "secret.png")
    Image.new("RGB", SECRET_SIZE, (255, 0, 255)).save(root.parent / "secret.jpg")
    Image.linear_gradient("L").resize((96, 64)).convert("RGB").save(root / "photo.jpg")
    Image.new("RGBA", (40, 30), (0, 0, 255, 128)).save(root / "alpha.png")
    Image.new("RGB", (20, 10), (1, 2, 3)).save(root / "sub" / "nested.png")
    Image.new("RGB", (12, 12), (3, 2, 1)).save(root / "é.png")  # NFC name; NFD requests must not find it elsewhere
    (root / "escape").symlink_to(base)  # a symlink out of the root
    return root


@pytest.fixture(scope="module")
def parser_client(jail: Path) -> Iterator[TestClient]:
    settings_ = Settings(
        _env_file=None,
        source={"local_root": jail},
        limits={"workers": 2, "max_width": 2048, "max_height": 2048},
        http={"client_hints": True},
        presets={"thumb": "w=32&h=32&fit=cover"},
        log={"level": "error"},
    )
    with TestClient(create_app(settings_)) as client:
        yield client
    report("parser", requests=sum(STATS.values()), statuses=dict(sorted(STATS.items())))


def asgi_get(
    client: TestClient, raw_path: bytes, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET with the request target exactly as sent: `path` is `raw_path` percent-decoded as uvicorn
    does it; nothing is normalised (httpx would resolve `..` before sending)."""

    async def call() -> tuple[int, dict[str, str], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"testserver"), *(headers or [])],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        sent: dict[str, Any] = {"body": b""}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                sent["headers"] = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message["headers"]}
            elif message["type"] == "http.response.body":
                sent["body"] += message.get("body", b"")

        await client.app(scope, receive, send)
        return sent["status"], sent["headers"], sent["body"]

    assert client.portal is not None
    status, response_headers, body = client.portal.call(call)
    STATS[str(status)] += 1
    return status, response_headers, body


def check_answer(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status != 500, body[:500]
    assert status < 500 or status == 503, body[:500]
    if status >= 400:
        assert headers["content-type"] == PROBLEM, (status, headers)
        assert headers["cache-control"] == "no-store"
        assert "x-cache" not in headers
    elif status == 200 and headers.get("content-type", "").startswith("image/"):
        image = Image.open(io.BytesIO(body))
        image.load()
        assert image.size != SECRET_SIZE, "a file outside the root was served"


# --- query strings -----------------------------------------------------------------------------------------

NAMES = [name for param in PARAMS for name in param.names]
JUNK_NAMES = ["s", "expires", "preset", "url", "", "W", "w ", "w[]", "w.x", "__proto__", "w\x00", "\uff57", "w%00"]
ODD_VALUES = [
    "",
    "auto",
    "0",
    "1",
    "-1",
    "NaN",
    "inf",
    "-0",
    "0x10",
    "1e9",
    "1_000",
    "١٢٣",  # Arabic-Indic digits: isdigit() is true
    "²",  # superscript two: isdigit() is true, int() fails
    "\uff19",  # fullwidth nine
    " 1",
    "1 ",
    "+1",
    "true",
    "\x00",
    "\U0001d7d8",
    "999999999999999999999999999999",
    "1." + "0" * 400,
    "#ffffff",
    "ffffffff",
    "0,0,0,0",
    "0,0,99999999,99999999",
    "1,2,3",
    "x",
    "10x",
    "x10",
    "thumb",
    "http://127.0.0.1/x.jpg",
    "%",
]
values = st.one_of(
    st.sampled_from([param.example for param in PARAMS]),
    st.sampled_from(ODD_VALUES),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=30),
    st.text(alphabet="0123456789,x.#-", max_size=30),
)
names = st.one_of(st.sampled_from(NAMES), st.sampled_from(JUNK_NAMES), st.text(max_size=12))
queries = st.lists(st.tuples(names, values), max_size=6)
raw_query_junk = st.lists(
    st.sampled_from(["&", "=", "==", ";", "%zz", "%c0%ae", "%00", "%", "+", "w=1", "w", "&&", "%26", "%3D", "?"]),
    max_size=8,
).map(lambda parts: "".join(parts).encode())


def encode_query(items: list[tuple[str, str]]) -> bytes:
    return "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in items).encode("ascii")


@fuzz_settings(PARSER_EXAMPLES)
@given(
    items=queries, junk=raw_query_junk, path=st.sampled_from([b"/img/photo.jpg", b"/img/alpha.png", b"/meta/photo.jpg"])
)
def test_query_strings_never_break_the_parser(
    parser_client: TestClient, items: list[tuple[str, str]], junk: bytes, path: bytes
) -> None:
    query = encode_query(items) + (b"&" + junk if junk else b"")
    check_answer(*asgi_get(parser_client, path, query))


# --- paths ---------------------------------------------------------------------------------------------------

SEGMENTS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2e",
    "%252e%252e",
    "%c0%ae%c0%ae",  # overlong UTF-8 for ".."
    "%e0%80%ae%e0%80%ae",
    "%2e%2e%2f",
    "..%2f",
    "..%5c",
    "..\\",
    "%5c",
    "%2f",
    "%00",
    "photo.jpg%00.png",
    "%ef%bc%8e%ef%bc%8e",  # fullwidth full stops
    "e%cc%81.png",  # é as e + combining acute (NFD)
    "%c3%a9.png",
    "escape",
    "secret.png",
    "secret.jpg",
    "photo.jpg",
    "sub",
    "nested.png",
    "",
    "%20",
    "~",
    "%7e",
    ";",
    "photo.jpg;.png",
    "%23",
    "%3f",
    "%ff",
    "%",
    "%%",
    "%u002e",
]
segments = st.one_of(st.sampled_from(SEGMENTS), st.text(max_size=12).map(lambda text: quote(text, safe="")))
paths = st.one_of(
    st.lists(segments, max_size=8).map("/".join),
    st.integers(1, 10_000).map(lambda n: "a" * n),
    st.integers(1, 3_000).map(lambda n: "../" * n + "secret.png"),
    st.integers(1, 2_000).map(lambda n: "%2e%2e/" * n + "etc/passwd"),
)


@fuzz_settings(PARSER_EXAMPLES)
@given(path=paths, route=st.sampled_from(["/img/", "/meta/", "/srcset/", "/img//", "/img/./", "/img/../img/"]))
def test_paths_never_escape_or_break(parser_client: TestClient, path: str, route: str) -> None:
    raw = (route + path).encode("ascii")
    status, headers, body = asgi_get(parser_client, raw, b"w=16")
    check_answer(status, headers, body)
    if status == 200 and headers.get("content-type", "").startswith("application/json"):
        assert b'"width":7,' not in body and b'"width": 7,' not in body  # /meta of the secret


@pytest.mark.parametrize(
    "raw",
    [
        b"/img/../secret.png",
        b"/img/%2e%2e/secret.png",
        b"/img/%252e%252e/secret.png",
        b"/img/%c0%ae%c0%ae/secret.png",
        b"/img/escape/secret.png",
        b"/img/sub/../../secret.png",
        b"/img/..%2fsecret.png",
        b"/img/..%5csecret.png",
        b"/img/%2fetc%2fpasswd",
        b"/img//etc/passwd",
        b"/img/photo.jpg%00.png",
        b"/meta/../secret.png",
        b"/srcset/%2e%2e/secret.png",
        b"/img/" + b"a" * 10_000,
        b"/img/" + b"../" * 3_000 + b"secret.png",
    ],
)
def test_path_tricks(parser_client: TestClient, raw: bytes) -> None:
    status, headers, body = asgi_get(parser_client, raw, b"w=16")
    assert status in (400, 404), (status, body[:200])
    check_answer(status, headers, body)


def test_unicode_names_are_found_as_stored(parser_client: TestClient) -> None:
    status, _, body = asgi_get(parser_client, b"/img/%c3%a9.png", b"w=8")  # NFC, as stored
    assert status == 200
    assert Image.open(io.BytesIO(body)).size == (8, 8)
    assert asgi_get(parser_client, b"/img/e%cc%81.png", b"w=8")[0] == 404  # NFD: another name


# --- headers -------------------------------------------------------------------------------------------------

header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)
ACCEPTS = [
    "image/avif,image/webp,*/*;q=0.8",
    "image/webp;q=0",
    "*/*;q=abc",
    "image/*;q=1e999",
    ";;;,,,",
    "image/webp;" * 200,
]
accept = st.one_of(st.sampled_from(ACCEPTS), header_text, st.lists(st.sampled_from(ACCEPTS), max_size=50).map(",".join))
etags = st.one_of(
    st.sampled_from(["*", 'W/"x"', '"', '""', "W/", ",,,", '"' + "0" * 32 + '"']),
    header_text,
    st.lists(header_text, max_size=40).map(", ".join),
)
numbers = st.one_of(
    st.sampled_from(["0", "-1", "1e9", "99999", "100000", "1.5", "3.999", "0.0001", "NaN", "", "٣", "4" * 400]),
    header_text,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
HINTED = [b"w=auto", b"dpr=auto&w=100", b"w=auto&dpr=auto", b"w=64", b"", b"q=50"]


@fuzz_settings(PARSER_EXAMPLES)
@given(
    values_=st.fixed_dictionaries(
        {
            "accept": accept,
            "if-none-match": etags,
            "sec-ch-width": numbers,
            "width": numbers,
            "sec-ch-dpr": numbers,
            "dpr": numbers,
            "save-data": st.one_of(st.sampled_from(["on", "ON", " on ", "off", ""]), header_text),
        }
    ),
    query=st.sampled_from(HINTED),
    which=st.sets(
        st.sampled_from(["accept", "if-none-match", "sec-ch-width", "width", "sec-ch-dpr", "dpr", "save-data"])
    ),
)
def test_headers_never_break_the_service(
    parser_client: TestClient, values_: dict[str, str], query: bytes, which: set[str]
) -> None:
    headers = [(name.encode(), values_[name].encode("utf-8")) for name in sorted(which)]  # raw bytes, as sent
    check_answer(*asgi_get(parser_client, b"/img/photo.jpg", query, headers))


# --- the pipeline ----------------------------------------------------------------------------------------


def _corpus(*candidates: Path) -> Image.Image:
    for path in candidates:
        if path.is_file():
            with Image.open(path) as image:
                image.load()
                return image.copy()
    raise FileNotFoundError(candidates[0])


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def build_seeds() -> dict[str, bytes]:
    """Small re-encodings of corpus images in every decoder the service allows, with their metadata
    (ICC, EXIF with orientation), animation and alpha; plus one corpus JPEG byte for byte."""
    photo = _corpus(CORPUS / "small" / "chelsea.png", SAMPLES_DIR / "chelsea.png")
    icc = photo.info.get("icc_profile")  # copy() keeps info
    small = photo.convert("RGB").resize((48, 32))
    logo = _corpus(CORPUS / "logo_rgba.png", SAMPLES_DIR / "astronaut.png").convert("RGBA").resize((40, 40))
    camera_path = next(
        (p for p in (CORPUS / "orientation" / "Landscape_6.jpg", REPO_IMAGES / "Landscape_6.jpg") if p.is_file()), None
    )
    seeds: dict[str, bytes] = {
        "photo.png": _save(small, "PNG", icc_profile=icc) if icc else _save(small, "PNG"),
        "photo.jpg": _save(small, "JPEG", quality=80, icc_profile=icc) if icc else _save(small, "JPEG"),
        "photo_progressive.jpg": _save(small, "JPEG", progressive=True),
        "photo.webp": _save(small, "WEBP"),
        "photo.tiff": _save(small, "TIFF", compression="tiff_deflate"),
        "photo.bmp": _save(small.resize((16, 12)), "BMP"),
        "photo_cmyk.jpg": _save(small.convert("CMYK"), "JPEG"),
        "grey16.png": _save(small.convert("I;16"), "PNG"),
        "logo.png": _save(logo, "PNG"),
        "logo_palette.png": _save(logo.quantize(16), "PNG", transparency=0),
        "logo.webp": _save(logo, "WEBP", lossless=True),
        "logo.avif": _save(logo, "AVIF"),
        "logo.ico": _save(logo, "ICO", sizes=[(16, 16), (32, 32)]),
    }
    gif_source = CORPUS / "animated.gif"
    if gif_source.is_file():
        frames = []
        with Image.open(gif_source) as animation:
            for index in range(3):
                animation.seek(index)
                frames.append(animation.convert("RGB").resize((24, 24)).quantize(32))
        seeds["earth.gif"] = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
        seeds["earth.webp"] = _save(
            frames[0].convert("RGB"), "WEBP", save_all=True, append_images=frames[1:], duration=80
        )
    if camera_path is not None:
        with Image.open(camera_path) as camera:
            exif = camera.info.get("exif", b"")
            seeds["oriented.jpg"] = _save(camera.convert("RGB").resize((40, 60)), "JPEG", exif=exif)
        seeds["corpus_original.jpg"] = camera_path.read_bytes()  # the corpus file itself
    return seeds


SEEDS = build_seeds()
OPTION_SETS = [
    [("w", "32")],
    [("w", "24"), ("h", "24"), ("fit", "cover"), ("g", "smart")],
    [("w", "20"), ("h", "30"), ("fit", "contain"), ("bg", "ff000080"), ("fm", "png")],
    [("fm", "webp"), ("strip", "0")],
    [("w", "16"), ("strip", "0"), ("fm", "jpeg")],
    [("fm", "gif"), ("colors", "8")],
    [("fm", "avif"), ("w", "16")],
    [("trim", "10"), ("w", "20")],
    [("frame", "1"), ("fm", "png")],
    [("crop", "2,2,10,10"), ("rot", "90"), ("flip", "hv")],
    [("blur", "2"), ("sharpen", "1"), ("radius", "6"), ("pad", "2"), ("fm", "webp")],
    [("fm", "blurhash")],
    [("w", "64"), ("enlarge", "1"), ("fit", "fill"), ("h", "8")],
]
CONTEXT = RenderContext(limits=Settings(_env_file=None).limits, formats=Settings(_env_file=None).formats)
LIMITS = Limits()
# `render()` answers any unexpected exception after decoding with a 415 and logs it on `imgproxy.error`
# (a safety net). The fuzzer looks behind the net: an exception caught there must be one listed here,
# either malformed input that a 415 describes well, or a known bug (pinned by a strict xfail in
# test_hostile_images.py); anything else fails the test. Remove a bug's line once it is fixed.
TOLERATED = [
    (ValueError, "palette index out of range", "Image.py"),  # tRNS longer than PLTE: malformed, 415 is right
]


class SafetyNet(logging.Handler):
    """Collects the exceptions `render()`'s safety net logs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.caught: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.caught.append(record.exc_info[1])


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk CRC, so a mutated chunk reaches its parser instead of the CRC check."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data[:8]), 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        end = pos + 12 + length
        if end > len(data):
            break
        kind_and_body = data[pos + 4 : end - 4]
        out += data[pos : pos + 4] + kind_and_body + struct.pack(">I", zlib.crc32(kind_and_body) & 0xFFFFFFFF)
        pos = end
    return bytes(out + data[pos:])


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)), label="seed")
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 4), label="mutations")):
        if not data:
            break
        near_head = draw(st.booleans())
        top = min(len(data), 512) if near_head else len(data)
        pos = draw(st.integers(0, top - 1))
        action = draw(st.sampled_from(["flip", "byte", "int", "truncate", "duplicate", "delete", "insert"]))
        if action == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "byte":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE]))
        elif action == "int":  # a 16- or 32-bit field set to an edge value, both byte orders
            size = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from([0, 1, 2**15, 2**16 - 1, 2**31 - 1, 2**32 - 1]))
            value &= (1 << (8 * size)) - 1
            data[pos : pos + size] = value.to_bytes(size, draw(st.sampled_from(["big", "little"])))
        elif action == "truncate":
            del data[pos:]
        elif action == "duplicate":
            span = draw(st.integers(1, 256))
            data[pos:pos] = data[pos : pos + span]
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw(st.sampled_from([b"\xff\xd8", b"\xff\xda", b"\x00" * 16, b"IDAT", b"\x21\xf9\x04"]))
    out = bytes(data)
    if draw(st.booleans(), label="fix crcs"):
        out = fix_png_crcs(out)
    return name, out


def tolerated(error: BaseException) -> bool:
    files = []
    trace = error.__traceback__
    while trace is not None:
        files.append(trace.tb_frame.f_code.co_filename)
        trace = trace.tb_next
    return any(
        isinstance(error, kind) and text in str(error) and any(f.endswith(where) for f in files)
        for kind, text, where in TOLERATED
    )


PIPELINE: Counter[str] = Counter()


@pytest.fixture(scope="module")
def pipeline_report() -> Iterator[None]:
    yield
    report("pipeline", iterations=sum(PIPELINE.values()), outcomes=dict(sorted(PIPELINE.items())))


@pytest.mark.usefixtures("pipeline_report")
@fuzz_settings(PIPELINE_EXAMPLES)
@given(sample=mutated(), query=st.sampled_from(OPTION_SETS))
def test_mutated_images_render_or_fail_cleanly(sample: tuple[str, bytes], query: list[tuple[str, str]]) -> None:
    _, data = sample
    options = parse_options(query, LIMITS)
    started = time.perf_counter()
    outcome = render_or_error(data, options)
    assert time.perf_counter() - started < 10.0
    if isinstance(outcome, str):
        PIPELINE[outcome] += 1
        return
    PIPELINE["200"] += 1
    if outcome.format is Format.BLURHASH:
        assert outcome.content.isascii() and len(outcome.content) >= 6
        return
    image = Image.open(io.BytesIO(outcome.content))
    image.load()
    assert image.size == (outcome.width, outcome.height)
    assert image.format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF", "gif": "GIF"}[outcome.format]


def render_or_error(data: bytes, options: Options) -> Rendered | str:
    """The rendered image, or the 4xx status it was refused with ("tolerated" when the refusal came from
    the safety net for a listed reason). An exception behind the safety net that is not listed fails."""
    net = SafetyNet()
    errors = logging.getLogger("imgproxy.error")
    errors.addHandler(net)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as in production: Pillow's warnings are not errors there
            try:
                return render(data, options, options.format, CONTEXT)
            except ImageProxyError as error:
                assert 400 <= error.status < 500, error
                for caught in net.caught:
                    if not tolerated(caught):
                        raise AssertionError("an unexpected exception behind render()'s safety net") from caught
                return "tolerated" if net.caught else str(error.status)
            except Exception as error:
                if not tolerated(error):  # without a safety net (older render()), the same list applies
                    raise
                return "tolerated"
    finally:
        errors.removeHandler(net)


def test_every_seed_renders_unmutated() -> None:
    for name, data in SEEDS.items():
        for query in OPTION_SETS:
            options = parse_options(query, LIMITS)
            try:
                render(data, options, options.format, CONTEXT)
            except BadParameter as error:  # frame=1 of a still image, or an output too large for the format
                assert error.extra["param"] in ("frame", "w", "h"), (name, query)
