"""Image output through HTTP: every returned body is decoded with Pillow and checked for format, exact size,
mode, orientation, colour and (absent) metadata.

Expected sizes are derived from the documented rules (the constrained side is exact, the other rounds
half-up; without `enlarge` nothing is upscaled; `cover` without `enlarge` is the largest crop of the
requested aspect ratio; `contain` pads to exactly w x h; `fill` is always exactly w x h).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image, ImageChops, ImageCms, ImageFile, ImageStat, PngImagePlugin
from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.options import Format, Output
from imgproxy.pipeline import decode as decoding
from imgproxy.pipeline import encode as encoding
from imgproxy.pipeline.encode import Frames, encode
from imgproxy.settings import Settings
from tests.conftest import assert_problem, decode

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)
WHITE = (255, 255, 255)
WIDE_RED = (200, 10, 10)  # the colour of the fixture's wide.png
PROBLEM = "application/problem+json"
SECRETS = (b"SECRET", b"SecretCam")
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "AVIF": "image/avif", "GIF": "image/gif"}

Colour = tuple[int, ...]


# --- helpers -------------------------------------------------------------------------------------------


def fetch(client: TestClient, url: str, accept: str | None = None) -> tuple[httpx.Response, Image.Image]:
    """GET an image: a 200 whose Content-Type matches the decoded format."""
    response = client.get(url, headers={"Accept": accept} if accept is not None else {})
    assert response.status_code == 200, response.text
    image = decode(response.content)
    assert image.format is not None
    assert response.headers["content-type"] == MEDIA_TYPES[image.format]
    return response, image


def vary(response: httpx.Response) -> set[str]:
    return {item.strip().lower() for item in response.headers.get("vary", "").split(",") if item.strip()}


def mean(image: Image.Image, box: tuple[int, int, int, int] | None = None, mode: str = "RGB") -> tuple[float, ...]:
    region = image.convert(mode) if box is None else image.convert(mode).crop(box)
    return tuple(ImageStat.Stat(region).mean)


def near(actual: Colour | tuple[float, ...], expected: Colour, tolerance: float) -> bool:
    return len(actual) == len(expected) and all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def thumb_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference (0..255) of small greyscale thumbnails."""
    size = (48, 32) if a.width >= a.height else (32, 48)
    ta = a.convert("L").resize(size, Image.Resampling.BOX)
    tb = b.convert("L").resize(size, Image.Resampling.BOX)
    return float(ImageStat.Stat(ImageChops.difference(ta, tb)).mean[0])


def jpeg_segments(data: bytes) -> list[int]:
    """Marker bytes of the JPEG segments before the first scan."""
    assert data[:2] == b"\xff\xd8"
    markers, pos = [], 2
    while pos < len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    return markers


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return chunks


def riff_chunks(data: bytes) -> list[bytes]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    chunks, pos = [], 12
    while pos < len(data):
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        chunks.append(data[pos : pos + 4])
        pos += 8 + length + (length & 1)
    return chunks


# --- generated sources ---------------------------------------------------------------------------------

D50 = (0.9642, 1.0, 0.8249)
SRGB_RED_XYZ = (0.4361, 0.2225, 0.0139)
SRGB_GREEN_XYZ = (0.3851, 0.7169, 0.0971)
SRGB_BLUE_XYZ = (0.1431, 0.0606, 0.7141)


def _s15fixed16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz: tuple[float, float, float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15fixed16(v) for v in xyz)


def _desc_tag(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (
        b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text + struct.pack(">IIHB", 0, 0, 0, 0) + bytes(67)
    )


def matrix_profile(
    description: str,
    red: tuple[float, float, float],
    green: tuple[float, float, float],
    blue: tuple[float, float, float],
) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile (gamma 2.2) with the given colorants."""
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    tags = [
        (b"desc", _desc_tag(description)),
        (b"wtpt", _xyz_tag(D50)),
        (b"rXYZ", _xyz_tag(red)),
        (b"gXYZ", _xyz_tag(green)),
        (b"bXYZ", _xyz_tag(blue)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"cprt", b"text\0\0\0\0none\0\0\0\0"),
    ]
    start = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, content in tags:
        padded = content + bytes(-len(content) % 4)
        table += signature + struct.pack(">II", start + len(body), len(padded))
        body += padded
    header = struct.pack(
        ">I4sI4s4s4s6H4s",
        start + len(body),
        bytes(4),
        0x02100000,
        b"mntr",
        b"RGB ",
        b"XYZ ",
        2024,
        1,
        1,
        0,
        0,
        0,
        b"acsp",
    )
    header += bytes(28) + b"".join(_s15fixed16(v) for v in D50) + bytes(4 + 16 + 28)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


# Red and blue colorants exchanged: the stored value (255, 0, 0) means sRGB blue.
SWAPPED_PROFILE = matrix_profile("Swapped red-blue test space", SRGB_BLUE_XYZ, SRGB_GREEN_XYZ, SRGB_RED_XYZ)


def _quadrants(size: int) -> Image.Image:
    half = size // 2
    image = Image.new("RGB", (size, size), RED)
    image.paste(GREEN, (half, 0, size, half))
    image.paste(BLUE, (0, half, half, size))
    image.paste(YELLOW, (half, half, size, size))
    return image


def _metadata_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "SecretCamMaker"  # Make
    exif[0x0112] = 1  # Orientation
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 31.0, 12.5), "E", (13.0, 24.0, 1.0)
    return exif


def make_generated(root: Path) -> None:
    _quadrants(100).save(root / "quadrants.png")
    left_right = Image.new("RGB", (200, 100), RED)
    left_right.paste(BLUE, (100, 0, 200, 100))
    left_right.save(root / "left_right.png")
    top_bottom = Image.new("RGB", (100, 200), RED)
    top_bottom.paste(BLUE, (0, 100, 100, 200))
    top_bottom.save(root / "top_bottom.png")
    corner = Image.new("RGB", (40, 20), WHITE)
    corner.paste(RED, (0, 0, 10, 10))
    corner.save(root / "corner.png")
    Image.new("RGB", (1000, 4), (20, 120, 220)).save(root / "thin.png")

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (32, 32), RED).save(root / "swapped.png", icc_profile=SWAPPED_PROFILE)
    Image.new("RGB", (32, 32), RED).save(root / "swapped.jpg", quality=95, icc_profile=SWAPPED_PROFILE)
    Image.new("RGBA", (32, 32), (*RED, 255)).save(root / "swapped_alpha.png", icc_profile=SWAPPED_PROFILE)
    Image.new("RGB", (32, 32), (30, 90, 150)).save(root / "srgb.png", icc_profile=srgb)

    photo = Image.new("RGB", (64, 48), (30, 90, 150))
    photo.save(
        root / "meta.jpg",
        exif=_metadata_exif(),
        comment=b"SECRET-COMMENT",
        icc_profile=srgb,
        xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>SECRET-XMP</x:xmpmeta>",
    )
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "SECRET-TEXT")
    text.add_text("Comment", "SECRET-ZTXT", zip=True)
    text.add_itxt("Description", "SECRET-ITXT", lang="en")
    text.add_text("XML:com.adobe.xmp", "SECRET-XMP")
    photo.save(root / "meta.png", pnginfo=text, exif=_metadata_exif(), icc_profile=srgb)

    # A truecolour PNG whose transparency is a tRNS key colour (magenta), not an alpha channel.
    keyed = Image.new("RGB", (40, 40), (255, 0, 255))
    keyed.paste((0, 128, 0), (10, 10, 30, 30))
    keyed.save(root / "rgb_key.png", transparency=(255, 0, 255))


@pytest.fixture(scope="module")
def generated_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    make_generated(root)
    return root


def _serve(root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(_env_file=None, source={"local_root": root}))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def client(source_root: Path) -> Iterator[TestClient]:
    """The conftest `client` (default settings over the shared source root), built once for this module."""
    yield from _serve(source_root)


@pytest.fixture(scope="module")
def gen(generated_root: Path) -> Iterator[TestClient]:
    """Default settings over the generated sources."""
    yield from _serve(generated_root)


# --- parameters and aliases ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("short", "alias", "size"),
    [
        ("w=120", "width=120", (120, 80)),  # 300 * 120/451 = 79.8 -> 80
        ("h=80", "height=80", (120, 80)),  # 451 * 80/300 = 120.3 -> 120
        ("w=120&h=80", "resize=120x80", (120, 80)),
        ("w=120", "resize=120x", (120, 80)),
        ("h=80", "resize=x80", (120, 80)),
        ("w=100&h=100&fit=cover&g=north", "w=100&h=100&fit=cover&gravity=north", (100, 100)),
        ("w=100&fm=jpeg", "w=100&fm=jpg", (100, 67)),
        ("w=100&fm=webp", "w=100&format=webp", (100, 67)),
        ("w=100&fm=jpeg&q=40", "w=100&fm=jpeg&quality=40", (100, 67)),
        ("w=100&rot=90", "w=100&rotate=90", (67, 100)),
        ("w=900&enlarge=1", "w=900&enlarge=true", (900, 599)),  # 300 * 900/451 = 598.7 -> 599
        ("w=100&fx=0.2", "w=100&g=focal&fx=0.2", (100, 67)),
    ],
)
def test_alias_gives_the_same_image(client: TestClient, short: str, alias: str, size: tuple[int, int]) -> None:
    first, image = fetch(client, f"/img/chelsea.png?{short}")
    second, aliased = fetch(client, f"/img/chelsea.png?{alias}")
    assert image.size == aliased.size == size
    assert image.format == aliased.format
    assert first.headers["etag"] == second.headers["etag"]
    assert first.content == second.content


@pytest.mark.parametrize(
    ("fm", "pil_format", "mode"),
    [
        ("jpeg", "JPEG", "RGB"),
        ("jpg", "JPEG", "RGB"),
        ("JPEG", "JPEG", "RGB"),
        ("png", "PNG", "RGB"),
        ("webp", "WEBP", "RGB"),
        ("avif", "AVIF", "RGB"),
        ("gif", "GIF", "P"),
    ],
)
def test_explicit_format(client: TestClient, fm: str, pil_format: str, mode: str) -> None:
    response, image = fetch(client, f"/img/chelsea.png?w=100&fm={fm}", accept="image/avif,image/webp,*/*")
    assert (image.format, image.size, image.mode) == (pil_format, (100, 67), mode)
    assert "accept" not in vary(response)  # an explicit format does not depend on Accept


def test_auto_format_is_negotiated(client: TestClient) -> None:
    response, image = fetch(client, "/img/chelsea.png?w=100&fm=auto", accept="text/html,*/*")
    assert (image.format, image.size) == ("JPEG", (100, 67))
    assert "accept" in vary(response)


@pytest.mark.parametrize("fm", ["jpeg", "webp", "avif"])
def test_higher_quality_gives_more_bytes(client: TestClient, fm: str) -> None:
    sizes = []
    for query in ("q=10", "", "q=95"):
        response, image = fetch(client, f"/img/coffee.png?w=300&fm={fm}&{query}")
        assert image.size == (300, 200)
        sizes.append(len(response.content))
    low, default, high = sizes
    assert low < default < high


# --- fit modes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "size"),
    [
        # chelsea.png 451x300, box 200x200: inside by width, outside by height
        ("chelsea.png", "w=200&h=200&fit=inside", (200, 133)),
        ("chelsea.png", "w=200&h=200&fit=outside", (301, 200)),
        ("chelsea.png", "w=200&h=200&fit=cover", (200, 200)),
        ("chelsea.png", "w=200&h=200&fit=contain", (200, 200)),
        ("chelsea.png", "w=200&h=200&fit=fill", (200, 200)),
        # chelsea.png, box 1000x1000 (an upscale), without and with enlarge
        ("chelsea.png", "w=1000&h=1000&fit=inside&enlarge=0", (451, 300)),
        ("chelsea.png", "w=1000&h=1000&fit=inside&enlarge=1", (1000, 665)),
        ("chelsea.png", "w=1000&h=1000&fit=outside&enlarge=0", (451, 300)),
        ("chelsea.png", "w=1000&h=1000&fit=outside&enlarge=1", (1503, 1000)),
        ("chelsea.png", "w=1000&h=1000&fit=cover&enlarge=0", (300, 300)),
        ("chelsea.png", "w=1000&h=1000&fit=cover&enlarge=1", (1000, 1000)),
        ("chelsea.png", "w=1000&h=1000&fit=contain&enlarge=0", (1000, 1000)),
        ("chelsea.png", "w=1000&h=1000&fit=contain&enlarge=1", (1000, 1000)),
        ("chelsea.png", "w=1000&h=1000&fit=fill&enlarge=0", (1000, 1000)),
        ("chelsea.png", "w=1000&h=1000&fit=fill&enlarge=1", (1000, 1000)),
        # coffee.png 600x400, box 300x100: inside by height, outside by width
        ("coffee.png", "w=300&h=100&fit=inside", (150, 100)),
        ("coffee.png", "w=300&h=100&fit=outside", (300, 200)),
        ("coffee.png", "w=300&h=100&fit=cover", (300, 100)),
        ("coffee.png", "w=300&h=100&fit=contain", (300, 100)),
        ("coffee.png", "w=300&h=100&fit=fill", (300, 100)),
        # coffee.png, box 900x500 (wider aspect than the source)
        ("coffee.png", "w=900&h=500&fit=inside&enlarge=0", (600, 400)),
        ("coffee.png", "w=900&h=500&fit=inside&enlarge=1", (750, 500)),
        ("coffee.png", "w=900&h=500&fit=outside&enlarge=0", (600, 400)),
        ("coffee.png", "w=900&h=500&fit=outside&enlarge=1", (900, 600)),
        ("coffee.png", "w=900&h=500&fit=cover&enlarge=0", (600, 333)),
        ("coffee.png", "w=900&h=500&fit=cover&enlarge=1", (900, 500)),
        ("coffee.png", "w=900&h=500&fit=contain&enlarge=0", (900, 500)),
        ("coffee.png", "w=900&h=500&fit=fill&enlarge=0", (900, 500)),
        # astronaut.png 512x512
        ("astronaut.png", "w=100&h=50&fit=inside", (50, 50)),
        ("astronaut.png", "w=100&h=50&fit=outside", (100, 100)),
        ("astronaut.png", "w=100&h=50&fit=cover", (100, 50)),
        ("astronaut.png", "w=100&h=50&fit=contain", (100, 50)),
        ("astronaut.png", "w=100&h=50&fit=fill", (100, 50)),
        ("astronaut.png", "w=1024&h=600&fit=inside&enlarge=0", (512, 512)),
        ("astronaut.png", "w=1024&h=600&fit=inside&enlarge=1", (600, 600)),
        ("astronaut.png", "w=1024&h=600&fit=outside&enlarge=0", (512, 512)),
        ("astronaut.png", "w=1024&h=600&fit=outside&enlarge=1", (1024, 1024)),
        ("astronaut.png", "w=1024&h=600&fit=cover&enlarge=0", (512, 300)),
        ("astronaut.png", "w=1024&h=600&fit=cover&enlarge=1", (1024, 600)),
        # EXIF-oriented photos: 1800x1200 (landscape) and 1200x1800 (portrait) once upright
        ("Landscape_1.jpg", "w=300&h=300&fit=inside", (300, 200)),
        ("Landscape_6.jpg", "w=300&h=300&fit=inside", (300, 200)),
        ("Landscape_6.jpg", "w=300&h=300&fit=outside", (450, 300)),
        ("Landscape_8.jpg", "w=300&h=300&fit=cover", (300, 300)),
        ("Landscape_5.jpg", "w=4000&h=4000&fit=cover&enlarge=0", (1200, 1200)),
        ("Landscape_7.jpg", "w=4000&h=4000&fit=inside&enlarge=0", (1800, 1200)),
        ("Portrait_1.jpg", "w=300&h=300&fit=inside", (200, 300)),
        ("Portrait_6.jpg", "w=300&h=300&fit=inside", (200, 300)),
        ("Portrait_6.jpg", "w=300&h=300&fit=outside", (300, 450)),
        ("Portrait_7.jpg", "w=300&h=100&fit=fill", (300, 100)),
    ],
)
def test_fit_size(client: TestClient, path: str, query: str, size: tuple[int, int]) -> None:
    _, image = fetch(client, f"/img/{path}?{query}&fm=jpeg")
    assert (image.format, image.size, image.mode) == ("JPEG", size, "RGB")


@pytest.mark.parametrize("fit", ["inside", "outside", "cover", "contain", "fill"])
@pytest.mark.parametrize(
    ("query", "size"),
    [
        ("w=100", (100, 67)),  # 300 * 100/451 = 66.5 -> 67
        ("h=100", (150, 100)),  # 451 / 3 = 150.3 -> 150
        ("w=1000", (451, 300)),  # no upscale without enlarge
        ("w=1000&enlarge=1", (1000, 665)),
        ("h=600&enlarge=1", (902, 600)),
        ("", (451, 300)),
    ],
)
def test_one_side_scales_uniformly_for_every_fit(
    client: TestClient, fit: str, query: str, size: tuple[int, int]
) -> None:
    _, image = fetch(client, f"/img/chelsea.png?fit={fit}&fm=jpeg&{query}")
    assert image.size == size


@pytest.mark.parametrize(
    ("path", "query", "size"),
    [
        ("chelsea.png", "w=100&dpr=2", (200, 133)),  # 300 * 200/451 = 133.04
        ("chelsea.png", "w=100&dpr=1.5", (150, 100)),  # 300 * 150/451 = 99.8
        ("coffee.png", "w=150&h=50&fit=cover&dpr=3", (450, 150)),
        ("coffee.png", "h=100&dpr=2.5", (375, 250)),
        ("coffee.png", "w=100&h=100&fit=contain&dpr=2", (200, 200)),
        ("coffee.png", "w=400&dpr=2", (600, 400)),  # 800 wanted, no upscale without enlarge
        ("coffee.png", "w=400&dpr=2&enlarge=1", (800, 533)),  # 400 * 800/600 = 533.3
        ("Landscape_3.jpg", "w=90&dpr=2", (180, 120)),
    ],
)
def test_dpr_multiplies(client: TestClient, path: str, query: str, size: tuple[int, int]) -> None:
    _, image = fetch(client, f"/img/{path}?{query}&fm=jpeg")
    assert image.size == size


@pytest.mark.parametrize(
    ("path", "query", "size"),
    [
        ("chelsea.png", "w=400&h=200&fit=fill&dpr=2", (500, 250)),  # 800x400 scaled by 500/800
        ("coffee.png", "w=300&dpr=4&enlarge=1", (500, 333)),  # 1200 -> 500; 400 * 500/600 = 333.3
        ("coffee.png", "w=300&h=300&fit=cover&dpr=4&enlarge=1", (500, 500)),
        ("wide.png", "h=400&enlarge=1", (500, 250)),  # 800x400 from a 2:1 source, over the width limit
        ("chelsea.png", "h=300&dpr=2&enlarge=1", (500, 333)),  # width bound: 300 * 500/451 = 332.6 -> 333
    ],
)
def test_size_over_the_limits_is_scaled_down_keeping_aspect(
    make_client: Callable[..., TestClient], path: str, query: str, size: tuple[int, int]
) -> None:
    client = make_client(limits={"max_width": 500, "max_height": 500})
    _, image = fetch(client, f"/img/{path}?{query}&fm=jpeg")
    assert image.size == size


def test_explicit_size_over_the_limit_is_a_400(make_client: Callable[..., TestClient]) -> None:
    client = make_client(limits={"max_width": 500, "max_height": 500})
    assert_problem(client.get("/img/chelsea.png?w=501"), 400, param="w")
    assert_problem(client.get("/img/chelsea.png?height=501"), 400, param="height")


def test_cover_without_enlarge_keeps_the_source_scale(gen: TestClient) -> None:
    # left_right.png is 200x100; a 400x400 cover without enlarge is the largest square it holds: 100x100
    _, centre = fetch(gen, "/img/left_right.png?w=400&h=400&fit=cover&fm=png")
    assert centre.size == (100, 100)
    assert centre.getpixel((10, 50)) == RED
    assert centre.getpixel((90, 50)) == BLUE
    _, east = fetch(gen, "/img/left_right.png?w=400&h=400&fit=cover&g=east&fm=png")
    assert east.size == (100, 100)
    assert near(mean(east), BLUE, 0.5)


# --- EXIF orientation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    ("kind", "query", "size"), [("Landscape", "w=180", (180, 120)), ("Portrait", "w=120", (120, 180))]
)
def test_exif_orientation_comes_out_upright(
    client: TestClient, kind: str, orientation: int, query: str, size: tuple[int, int]
) -> None:
    _, reference = fetch(client, f"/img/{kind}_1.jpg?{query}&fm=jpeg")
    response, image = fetch(client, f"/img/{kind}_{orientation}.jpg?{query}&fm=jpeg")
    assert reference.size == image.size == size
    assert thumb_difference(image, reference) < 8
    assert "exif" not in image.info
    assert len(image.getexif()) == 0
    assert b"Exif\x00\x00" not in response.content
    assert 0xE1 not in jpeg_segments(response.content)


def test_orientation_samples_are_distinguishable(client: TestClient) -> None:
    """The upright check above would pass for any transform if the photo were symmetric: it is not."""
    _, upright = fetch(client, "/img/Landscape_1.jpg?w=180&fm=jpeg")
    for transpose in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180):
        assert thumb_difference(upright, upright.transpose(transpose)) > 20


@pytest.mark.parametrize("orientation", range(1, 9))
def test_crop_is_in_oriented_coordinates(client: TestClient, orientation: int) -> None:
    _, reference = fetch(client, "/img/Landscape_1.jpg?crop=900,0,900,600&w=90&fm=png")
    _, image = fetch(client, f"/img/Landscape_{orientation}.jpg?crop=900,0,900,600&w=90&fm=png")
    assert reference.size == image.size == (90, 60)
    assert thumb_difference(image, reference) < 8


def test_unoriented_sample_without_parameters(client: TestClient) -> None:
    _, image = fetch(client, "/img/landscape.jpg")  # stored 1200x1800 with orientation 6
    assert (image.format, image.size) == ("JPEG", (1800, 1200))


# --- gravity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "colour"),
    [
        ("left_right.png", "g=west", RED),
        ("left_right.png", "g=northwest", RED),
        ("left_right.png", "g=southwest", RED),
        ("left_right.png", "gravity=west", RED),
        ("left_right.png", "g=east", BLUE),
        ("left_right.png", "g=northeast", BLUE),
        ("left_right.png", "g=southeast", BLUE),
        ("left_right.png", "fx=0.1", RED),
        ("left_right.png", "fx=0.9", BLUE),
        ("left_right.png", "g=focal&fx=0&fy=0.5", RED),
        ("left_right.png", "g=focal&fx=1", BLUE),
        ("top_bottom.png", "g=north", RED),
        ("top_bottom.png", "g=northeast", RED),
        ("top_bottom.png", "g=northwest", RED),
        ("top_bottom.png", "g=south", BLUE),
        ("top_bottom.png", "g=southeast", BLUE),
        ("top_bottom.png", "g=southwest", BLUE),
        ("top_bottom.png", "fy=0.1", RED),
        ("top_bottom.png", "fy=0.9", BLUE),
    ],
)
def test_cover_gravity_keeps_the_right_part(gen: TestClient, path: str, query: str, colour: Colour) -> None:
    size = (50, 100) if path == "left_right.png" else (100, 50)  # half the short side along the long one
    _, image = fetch(gen, f"/img/{path}?w={size[0]}&h={size[1]}&fit=cover&fm=png&{query}")
    assert (image.size, image.mode) == (size, "RGB")
    assert mean(image) == tuple(float(c) for c in colour)
    # scaled by half on the way: still only that part of the source
    _, small = fetch(gen, f"/img/{path}?w={size[0] // 2}&h={size[1] // 2}&fit=cover&fm=png&{query}")
    assert small.size == (size[0] // 2, size[1] // 2)
    assert near(mean(small), colour, 1)


@pytest.mark.parametrize(
    ("query", "red_columns"),
    [
        ("", 25),  # centre: box 75..125, the boundary at 100
        ("g=center", 25),
        ("g=north", 25),
        ("g=focal", 25),  # focal point defaults to the centre
        ("fx=0.45", 35),  # box 65..115
        ("fx=0.6", 5),  # box 95..145
    ],
)
def test_cover_gravity_split(gen: TestClient, query: str, red_columns: int) -> None:
    _, image = fetch(gen, f"/img/left_right.png?w=50&h=100&fit=cover&fm=png&{query}")
    assert image.size == (50, 100)
    assert image.getpixel((red_columns - 1, 50)) == RED
    assert image.getpixel((red_columns, 50)) == BLUE


# --- crop ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crop", "size", "colour"),
    [
        ("0,0,50,50", (50, 50), RED),
        ("50,0,50,50", (50, 50), GREEN),
        ("0,50,50,50", (50, 50), BLUE),
        ("50,50,50,50", (50, 50), YELLOW),
        ("60,70,100,100", (40, 30), YELLOW),  # partly outside: clamped to the source
        ("99,99,5,5", (1, 1), YELLOW),
        ("0,0,1000,1000", (100, 100), None),  # the whole source
    ],
)
def test_crop_region(gen: TestClient, crop: str, size: tuple[int, int], colour: Colour | None) -> None:
    _, image = fetch(gen, f"/img/quadrants.png?crop={crop}&fm=png")
    assert (image.size, image.mode) == (size, "RGB")
    if colour is not None:
        assert mean(image) == tuple(float(c) for c in colour)


def test_crop_straddling_quadrants(gen: TestClient) -> None:
    _, image = fetch(gen, "/img/quadrants.png?crop=25,25,50,50&fm=png")
    assert image.size == (50, 50)
    assert image.getpixel((24, 24)) == RED
    assert image.getpixel((25, 24)) == GREEN
    assert image.getpixel((24, 25)) == BLUE
    assert image.getpixel((25, 25)) == YELLOW
    _, strip = fetch(gen, "/img/quadrants.png?crop=90,0,50,100&fm=png")  # clamped to 10x100
    assert strip.size == (10, 100)
    assert mean(strip, (0, 0, 10, 50)) == (0.0, 255.0, 0.0)
    assert mean(strip, (0, 50, 10, 100)) == (255.0, 255.0, 0.0)


def test_crop_then_resize(gen: TestClient) -> None:
    _, image = fetch(gen, "/img/quadrants.png?crop=50,0,50,50&w=10&fm=png")
    assert image.size == (10, 10)
    assert image.getpixel((5, 5)) == GREEN
    _, enlarged = fetch(gen, "/img/quadrants.png?crop=0,50,50,50&w=200&h=100&fit=fill&fm=png")
    assert enlarged.size == (200, 100)
    assert enlarged.getpixel((100, 50)) == BLUE


@pytest.mark.parametrize(
    ("query", "size", "colour"),
    [
        ("crop=50,0,50,50&w=10", (10, 10), GREEN),
        ("crop=0,50,50,50&w=200&h=100&fit=fill", (200, 100), BLUE),
        ("crop=25,25,25,25&w=100&h=100&fit=cover&enlarge=1", (100, 100), RED),
    ],
)
def test_crop_ignores_pixels_outside_the_rectangle(
    gen: TestClient, query: str, size: tuple[int, int], colour: Colour
) -> None:
    _, image = fetch(gen, f"/img/quadrants.png?{query}&fm=png")
    assert image.size == size
    low, high = zip(*image.getextrema(), strict=True)
    assert near(low, colour, 4) and near(high, colour, 4), image.getextrema()


@pytest.mark.parametrize("crop", ["100,0,10,10", "0,100,10,10", "500,500,1,1", "100,100,1,1"])
def test_crop_wholly_outside_is_a_400(gen: TestClient, crop: str) -> None:
    assert_problem(gen.get(f"/img/quadrants.png?crop={crop}"), 400, param="crop")


# --- rotate and flip -----------------------------------------------------------------------------------


def red_corner(image: Image.Image) -> str:
    """Which corner of the image holds the red marker (the others are white)."""
    w, h = image.size
    corners = {"tl": (2, 2), "tr": (w - 3, 2), "bl": (2, h - 3), "br": (w - 3, h - 3)}
    red = [name for name, xy in corners.items() if image.convert("RGB").getpixel(xy) == RED]
    white = [name for name, xy in corners.items() if image.convert("RGB").getpixel(xy) == WHITE]
    assert len(red) == 1 and len(white) == 3, (red, white)
    return red[0]


@pytest.mark.parametrize(
    ("query", "size", "corner"),
    [
        ("", (40, 20), "tl"),
        ("rot=0", (40, 20), "tl"),
        ("rot=90", (20, 40), "tr"),  # clockwise: the top-left corner goes to the top-right
        ("rot=180", (40, 20), "br"),
        ("rot=270", (20, 40), "bl"),
        ("rotate=270", (20, 40), "bl"),
        ("flip=h", (40, 20), "tr"),
        ("flip=v", (40, 20), "bl"),
        ("flip=hv", (40, 20), "br"),
        ("rot=90&flip=h", (20, 40), "tl"),  # flip after rotation
        ("rot=90&flip=v", (20, 40), "br"),
        ("rot=270&flip=h", (20, 40), "br"),
        ("rot=180&flip=hv", (40, 20), "tl"),
    ],
)
def test_rotate_and_flip(gen: TestClient, query: str, size: tuple[int, int], corner: str) -> None:
    _, image = fetch(gen, f"/img/corner.png?fm=png&{query}")
    assert (image.size, image.mode) == (size, "RGB")
    assert red_corner(image) == corner


def test_rotation_applies_after_resizing(gen: TestClient, client: TestClient) -> None:
    _, image = fetch(gen, "/img/corner.png?w=20&rot=90&fm=png")  # 40x20 -> 20x10 -> rotated 10x20
    assert image.size == (10, 20)
    _, photo = fetch(client, "/img/Landscape_6.jpg?w=180&rot=270&fm=jpeg")
    assert photo.size == (120, 180)
    _, upright = fetch(client, "/img/Landscape_1.jpg?w=180&fm=jpeg")
    assert thumb_difference(photo, upright.transpose(Image.Transpose.ROTATE_90)) < 8


# --- colour modes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fm", "pil_format"), [("auto", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_cmyk_becomes_red_rgb(client: TestClient, fm: str, pil_format: str) -> None:
    _, image = fetch(client, f"/img/cmyk.jpg?fm={fm}")
    assert (image.format, image.size, image.mode) == (pil_format, (64, 48), "RGB")
    assert near(mean(image), RED, 20)


@pytest.mark.parametrize(
    ("fm", "pil_format", "mode"), [("auto", "JPEG", "L"), ("png", "PNG", "L"), ("webp", "WEBP", "RGB")]
)
def test_sixteen_bit_grey_is_scaled_not_clipped(client: TestClient, fm: str, pil_format: str, mode: str) -> None:
    _, image = fetch(client, f"/img/grey16.png?fm={fm}")
    assert (image.format, image.size, image.mode) == (pil_format, (40, 30), mode)
    expected = round(60000 / 65535 * 255)  # 233
    assert all(abs(v - expected) <= 2 for v in mean(image))


@pytest.mark.parametrize("query", ["", "fm=png", "fm=auto"])
def test_palette_transparency_becomes_alpha(client: TestClient, query: str) -> None:
    _, image = fetch(client, f"/img/palette_trns.png?{query}", accept="text/html")
    assert (image.format, image.size, image.mode) == ("PNG", (50, 50), "RGBA")
    for xy in [(0, 0), (5, 45), (49, 49), (45, 20)]:
        assert image.getpixel(xy)[3] == 0
    assert image.getpixel((25, 25)) == (0, 128, 0, 255)
    assert image.getpixel((10, 10)) == (0, 128, 0, 255)
    assert image.getpixel((9, 9))[3] == 0


@pytest.mark.parametrize(("query", "background"), [("", WHITE), ("bg=0000ff", BLUE), ("bg=%23000000", (0, 0, 0))])
def test_palette_transparency_flattened_to_jpeg_is_never_magenta(
    client: TestClient, query: str, background: Colour
) -> None:
    _, image = fetch(client, f"/img/palette_trns.png?fm=jpeg&{query}")
    assert (image.format, image.size, image.mode) == ("JPEG", (50, 50), "RGB")
    for xy in [(1, 1), (48, 1), (1, 48), (48, 48), (25, 3)]:
        assert near(image.getpixel(xy), background, 40), xy
    assert near(image.getpixel((25, 25)), (0, 128, 0), 12)


def test_palette_transparency_contain_padded_jpeg_is_never_magenta(client: TestClient) -> None:
    _, image = fetch(client, "/img/palette_trns.png?w=100&h=100&fit=contain&fm=jpeg")
    assert (image.format, image.size) == ("JPEG", (100, 100))
    # the 50x50 source sits at 25..75; its transparent border (25..35) must be white like the padding
    for xy in [(5, 5), (28, 28), (71, 71), (50, 28)]:
        assert near(image.getpixel(xy), WHITE, 40), xy
    assert near(image.getpixel((50, 50)), (0, 128, 0), 12)


@pytest.mark.parametrize(("query", "background"), [("", WHITE), ("bg=00ff00", GREEN)])
def test_transparent_contain_padded_jpeg_is_flattened_on_bg(client: TestClient, query: str, background: Colour) -> None:
    _, image = fetch(client, f"/img/transparent.png?w=100&h=100&fit=contain&fm=jpeg&{query}")
    assert (image.format, image.size) == ("JPEG", (100, 100))
    assert near(mean(image, (0, 0, 100, 10)), background, 8)  # padding
    assert near(mean(image, (10, 40, 70, 60)), background, 8)  # the fully transparent image itself


def test_truecolour_transparency_key_becomes_alpha(gen: TestClient) -> None:
    _, image = fetch(gen, "/img/rgb_key.png", accept="text/html")
    assert (image.format, image.size, image.mode) == ("PNG", (40, 40), "RGBA")
    assert image.getpixel((2, 2))[3] == 0
    assert image.getpixel((20, 20)) == (0, 128, 0, 255)
    _, flat = fetch(gen, "/img/rgb_key.png?fm=jpeg")
    assert near(flat.getpixel((2, 2)), WHITE, 40)


def test_grey_alpha(client: TestClient) -> None:
    _, image = fetch(client, "/img/grey_alpha.png", accept="text/html")
    assert (image.format, image.size, image.mode) == ("PNG", (32, 32), "RGBA")
    assert image.getpixel((16, 16)) == (100, 100, 100, 128)
    _, webp = fetch(client, "/img/grey_alpha.png", accept="image/webp")
    assert (webp.format, webp.mode) == ("WEBP", "RGBA")
    assert near(webp.getpixel((16, 16)), (100, 100, 100, 128), 3)
    _, flat = fetch(client, "/img/grey_alpha.png?fm=jpeg")
    assert (flat.format, flat.mode) == ("JPEG", "RGB")
    composite = 100 * 128 / 255 + 255 * (1 - 128 / 255)  # 177.2: half over white
    assert all(abs(v - composite) <= 3 for v in mean(flat))
    _, on_black = fetch(client, "/img/grey_alpha.png?fm=jpeg&bg=000000")
    assert all(abs(v - 100 * 128 / 255) <= 3 for v in mean(on_black))


@pytest.mark.parametrize(
    ("query", "background"),
    [("", WHITE), ("bg=ff0000", RED), ("bg=00ff0080", GREEN), ("bg=%230000ff", BLUE)],
)
def test_transparent_to_jpeg_is_flattened_on_bg(client: TestClient, query: str, background: Colour) -> None:
    _, image = fetch(client, f"/img/transparent.png?fm=jpeg&{query}")
    assert (image.format, image.size, image.mode) == ("JPEG", (80, 60), "RGB")
    assert near(mean(image), background, 3)


@pytest.mark.parametrize(("fm", "pil_format"), [("png", "PNG"), ("webp", "WEBP"), ("avif", "AVIF"), ("gif", "GIF")])
def test_transparent_keeps_alpha_in_alpha_formats(client: TestClient, fm: str, pil_format: str) -> None:
    _, image = fetch(client, f"/img/transparent.png?fm={fm}")
    assert (image.format, image.size) == (pil_format, (80, 60))
    rgba = image.convert("RGBA")
    assert rgba.getpixel((40, 30))[3] == 0
    assert rgba.getextrema()[3] == (0, 0)


# --- format negotiation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "accept", "pil_format", "mode"),
    [
        ("transparent.png", "text/html", "PNG", "RGBA"),
        ("transparent.png", "image/jpeg,image/png,*/*;q=0.8", "PNG", "RGBA"),
        ("palette_trns.png", "*/*", "PNG", "RGBA"),
        ("grey_alpha.png", "image/*", "PNG", "RGBA"),
        ("chelsea.png", "text/html", "JPEG", "RGB"),
        ("chelsea.png", "image/*,*/*", "JPEG", "RGB"),
        ("chelsea.png", "image/webp,*/*", "WEBP", "RGB"),
        ("transparent.png", "image/webp", "WEBP", "RGBA"),
        ("chelsea.png", "image/avif,image/webp,*/*", "AVIF", "RGB"),
        ("transparent.png", "image/avif", "AVIF", "RGBA"),
        ("chelsea.png", "image/avif;q=0,image/webp", "WEBP", "RGB"),
    ],
)
def test_negotiated_format(client: TestClient, path: str, accept: str, pil_format: str, mode: str) -> None:
    response, image = fetch(client, f"/img/{path}?fm=auto", accept=accept)
    assert (image.format, image.mode) == (pil_format, mode)
    assert "accept" in vary(response)


def test_avif_disabled_negotiates_webp(make_client: Callable[..., TestClient]) -> None:
    client = make_client(formats={"avif": False})
    _, image = fetch(client, "/img/chelsea.png?w=100", accept="image/avif,image/webp,*/*")
    assert (image.format, image.size) == ("WEBP", (100, 67))
    _, legacy = fetch(client, "/img/chelsea.png?w=100", accept="image/avif,*/*")
    assert legacy.format == "JPEG"
    assert_problem(client.get("/img/chelsea.png?fm=avif"), 400, param="fm")


# --- contain padding -----------------------------------------------------------------------------------


def test_contain_png_pads_with_transparency_and_centres(client: TestClient) -> None:
    _, image = fetch(client, "/img/wide.png?w=100&h=100&fit=contain&fm=png")  # 100x50 at y 25..74
    assert (image.format, image.size, image.mode) == ("PNG", (100, 100), "RGBA")
    assert image.getpixel((50, 24))[3] == 0
    assert image.getpixel((50, 25)) == (*WIDE_RED, 255)
    assert image.getpixel((50, 74)) == (*WIDE_RED, 255)
    assert image.getpixel((50, 75))[3] == 0
    assert image.crop((0, 0, 100, 25)).getextrema()[3] == (0, 0)
    assert image.crop((0, 75, 100, 100)).getextrema()[3] == (0, 0)

    _, across = fetch(client, "/img/wide.png?w=200&h=50&fit=contain&fm=png")  # 100x50 at x 50..149
    assert across.size == (200, 50)
    assert across.getpixel((49, 25))[3] == 0
    assert across.getpixel((50, 25)) == (*WIDE_RED, 255)
    assert across.getpixel((149, 25)) == (*WIDE_RED, 255)
    assert across.getpixel((150, 25))[3] == 0


@pytest.mark.parametrize(("query", "pad"), [("fm=jpeg", WHITE), ("fm=jpeg&bg=0000ff", BLUE), ("", WHITE)])
def test_contain_jpeg_pads_with_bg(client: TestClient, query: str, pad: Colour) -> None:
    _, image = fetch(client, f"/img/wide.png?w=100&h=100&fit=contain&{query}", accept="text/html")
    assert (image.format, image.size, image.mode) == ("JPEG", (100, 100), "RGB")
    assert near(mean(image, (0, 0, 100, 16)), pad, 4)
    assert near(mean(image, (0, 84, 100, 100)), pad, 4)
    assert near(mean(image, (8, 33, 92, 67)), WIDE_RED, 6)


def test_contain_png_with_bg_pads_in_that_colour(client: TestClient) -> None:
    _, image = fetch(client, "/img/wide.png?w=100&h=100&fit=contain&fm=png&bg=ff0000")
    assert image.size == (100, 100)
    assert image.convert("RGBA").getpixel((50, 24)) == (255, 0, 0, 255)
    assert image.convert("RGBA").getpixel((50, 25)) == (*WIDE_RED, 255)
    assert image.convert("RGBA").getpixel((50, 75)) == (255, 0, 0, 255)


def test_contain_scales_a_photo_and_centres_it(client: TestClient) -> None:
    # coffee.png 600x400 into 300x300: 300x200 at y 50..249
    _, image = fetch(client, "/img/coffee.png?w=300&h=300&fit=contain&fm=png")
    assert (image.size, image.mode) == ((300, 300), "RGBA")
    assert image.crop((0, 0, 300, 50)).getextrema()[3] == (0, 0)
    assert image.crop((0, 50, 300, 250)).getextrema()[3] == (255, 255)
    assert image.crop((0, 250, 300, 300)).getextrema()[3] == (0, 0)
    _, plain = fetch(client, "/img/coffee.png?w=300&fm=png")
    assert thumb_difference(image.crop((0, 50, 300, 250)), plain) < 2


# --- metadata ------------------------------------------------------------------------------------------


def assert_no_metadata(content: bytes, image: Image.Image) -> None:
    for secret in SECRETS:
        assert secret not in content
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment", "Comment", "Author", "Description"):
        assert key not in image.info
    assert len(image.getexif()) == 0
    if image.format == "JPEG":
        assert set(jpeg_segments(content)) & {0xE1, 0xE2, 0xED, 0xFE} == set()  # APP1 EXIF/XMP, ICC, IPTC, COM
    elif image.format == "PNG":
        assert set(png_chunks(content)) & {b"iCCP", b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"sRGB"} == set()
    elif image.format == "WEBP":
        assert set(riff_chunks(content)) & {b"EXIF", b"ICCP", b"XMP "} == set()


@pytest.mark.parametrize("fm", ["jpeg", "png", "webp", "avif", "gif"])
@pytest.mark.parametrize("path", ["meta.jpg", "meta.png"])
def test_output_has_no_metadata(gen: TestClient, generated_root: Path, path: str, fm: str) -> None:
    with Image.open(generated_root / path) as source:
        source.load()
        assert {"exif", "icc_profile"} <= source.info.keys()  # the source does carry metadata
        assert len(source.getexif().get_ifd(0x8825)) == 4  # GPS included
    response, image = fetch(gen, f"/img/{path}?fm={fm}")
    assert image.size == (64, 48)
    assert_no_metadata(response.content, image)
    _, resized = fetch(gen, f"/img/{path}?fm={fm}&w=32")
    assert resized.size == (32, 24)
    assert_no_metadata(gen.get(f"/img/{path}?fm={fm}&w=32").content, resized)


@pytest.mark.parametrize("path", ["chelsea.png", "astronaut.png", "Landscape_3.jpg"])
@pytest.mark.parametrize("accept", ["*/*", "image/webp", "image/avif"])
def test_sample_outputs_have_no_metadata(client: TestClient, path: str, accept: str) -> None:
    response, image = fetch(client, f"/img/{path}?w=64", accept=accept)
    assert image.width == 64
    assert_no_metadata(response.content, image)


# --- ICC profiles --------------------------------------------------------------------------------------


def test_generated_profile_is_not_srgb() -> None:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(SWAPPED_PROFILE))
    assert "srgb" not in ImageCms.getProfileDescription(profile).lower()


@pytest.mark.parametrize(
    ("path", "fm", "mode"),
    [("swapped.png", "png", "RGB"), ("swapped.jpg", "png", "RGB"), ("swapped.png", "jpeg", "RGB")],
)
def test_icc_profile_is_converted_to_srgb(gen: TestClient, path: str, fm: str, mode: str) -> None:
    response, image = fetch(gen, f"/img/{path}?fm={fm}")
    assert (image.size, image.mode) == ((32, 32), mode)
    assert near(mean(image), BLUE, 12)  # stored red in a red/blue swapped space is sRGB blue
    assert "icc_profile" not in image.info
    assert_no_metadata(response.content, image)


def test_icc_profile_with_alpha_is_converted(gen: TestClient) -> None:
    _, image = fetch(gen, "/img/swapped_alpha.png?fm=png")
    assert (image.size, image.mode) == ((32, 32), "RGBA")
    assert near(mean(image, mode="RGBA"), (*BLUE, 255), 12)
    assert "icc_profile" not in image.info


def test_srgb_profile_is_dropped_and_colours_kept(gen: TestClient) -> None:
    response, image = fetch(gen, "/img/srgb.png?fm=png")
    assert mean(image) == (30.0, 90.0, 150.0)
    assert "icc_profile" not in image.info
    assert b"iCCP" not in png_chunks(response.content)


# --- encoder limits ------------------------------------------------------------------------------------


@pytest.fixture
def big_client(make_client: Callable[..., TestClient], generated_root: Path) -> TestClient:
    return make_client(
        limits={"max_width": 65535, "max_height": 65535, "max_source_pixels": 50_000_000},
        source={"local_root": generated_root},
    )


@pytest.mark.parametrize(
    "query",
    [
        "w=17000&h=4&fit=fill&fm=webp",
        "w=17000&enlarge=1&fm=webp",  # 1000x4 upscaled to 17000x68
        "w=4&h=16384&fit=fill&fm=webp",
        "w=16384&h=4&fit=fill&rot=90&fm=webp",
        "w=16384&h=4&fit=fill&rot=270&fm=webp",
        "w=65501&h=1&fit=fill&fm=jpeg",
    ],
)
def test_output_over_the_encoder_limit_is_a_400(big_client: TestClient, query: str) -> None:
    for _ in range(2):  # not cached either
        body = assert_problem(big_client.get(f"/img/thin.png?{query}"), 400)
        assert body["type"] == "urn:imgproxy:problem:bad-parameter"


def test_negotiated_webp_over_the_limit_is_a_400(big_client: TestClient) -> None:
    assert_problem(big_client.get("/img/thin.png?w=17000&enlarge=1", headers={"Accept": "image/webp"}), 400)


@pytest.mark.parametrize(
    ("query", "pil_format", "size"),
    [
        ("w=16383&h=4&fit=fill&fm=webp", "WEBP", (16383, 4)),
        ("w=17000&h=4&fit=fill&fm=png", "PNG", (17000, 4)),
        ("w=17000&h=4&fit=fill&fm=avif", "AVIF", (17000, 4)),
        ("w=17000&h=4&fit=fill&fm=jpeg", "JPEG", (17000, 4)),
        ("w=65500&h=1&fit=fill&fm=jpeg", "JPEG", (65500, 1)),
        ("w=17000&enlarge=1&fm=png", "PNG", (17000, 68)),
    ],
)
def test_output_within_the_encoder_limit(
    big_client: TestClient, query: str, pil_format: str, size: tuple[int, int]
) -> None:
    _, image = fetch(big_client, f"/img/thin.png?{query}")
    assert (image.format, image.size) == (pil_format, size)


def test_wide_source_over_the_webp_limit(make_client: Callable[..., TestClient]) -> None:
    client = make_client(limits={"max_width": 20000, "max_height": 20000, "max_source_pixels": 50_000_000})
    assert_problem(client.get("/img/wide.png?w=17000&h=10&fit=fill&fm=webp"), 400)
    _, image = fetch(client, "/img/wide.png?w=17000&h=10&fit=fill&fm=png")
    assert image.size == (17000, 10)


# --- broken sources ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["truncated.jpg", "empty.png", "not_an_image.jpg"])
@pytest.mark.parametrize("query", ["w=100", "fm=webp", "w=50&h=50&fit=cover&fm=png"])
def test_undecodable_source_is_a_415_and_not_cached(client: TestClient, path: str, query: str) -> None:
    for _ in range(3):
        body = assert_problem(client.get(f"/img/{path}?{query}"), 415)
        assert body["type"] == "urn:imgproxy:problem:unsupported-image"
        assert path not in str(body["detail"])


def test_successful_render_is_cached(client: TestClient) -> None:
    """The control for the test above: the same flow does cache a good image."""
    first = client.get("/img/wide.png?w=10")
    second = client.get("/img/wide.png?w=10")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.content == second.content
    assert decode(second.content).size == (10, 5)


def test_the_decoder_gets_the_whole_source_in_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer GIL hand-offs for render threads (bench/PROFILE.md): one read instead of 64 KB ones, and
    the same pixels."""
    source = io.BytesIO()
    Image.effect_noise((800, 600), 60).convert("RGB").save(source, "JPEG", quality=95)
    data = source.getvalue()
    assert len(data) > 4 * ImageFile.MAXBLOCK
    reads: list[int] = []

    class CountingBytesIO(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            reads.append(len(chunk))
            return chunk

    monkeypatch.setattr(decoding, "io", SimpleNamespace(BytesIO=CountingBytesIO))
    image = decoding.open_image(data, 10**8, 100)
    image.load()
    assert max(reads) > len(data) - ImageFile.MAXBLOCK, "the pixel data came in one read"
    with Image.open(io.BytesIO(data)) as reference:
        reference.load()
        assert ImageChops.difference(image, reference).getbbox() is None


@pytest.mark.parametrize(
    ("fmt", "output"),
    [
        (Format.JPEG, Output(progressive=True)),
        (Format.JPEG, Output(progressive=False)),
        (Format.PNG, Output()),
        (Format.GIF, Output()),
        (Format.WEBP, Output()),
    ],
)
def test_encoding_through_a_descriptor_gives_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, fmt: Format, output: Output
) -> None:
    """Encoders write to an in-memory file with a descriptor (so Pillow's JPEG encoder lets go of the
    GIL); without one (not Linux) they write to a buffer. Both give the same bytes, animations included."""
    noise = [Image.effect_noise((300, 200), sigma).convert("RGB") for sigma in (40, 90)]

    def frames() -> Frames:
        images = [image.copy() for image in noise]
        return Frames(images, durations=[80, 120], loop=0, disposal=[0, 0]) if fmt is Format.GIF else Frames(images[:1])

    settings = Settings(_env_file=None).formats
    through_descriptor = encode(frames(), fmt, 80, output, settings, exif=None)
    monkeypatch.setattr(encoding, "os", SimpleNamespace())  # no memfd_create: the BytesIO path
    through_buffer = encode(frames(), fmt, 80, output, settings, exif=None)
    assert through_descriptor == through_buffer
    with Image.open(io.BytesIO(through_descriptor)) as image:
        assert image.format == encoding.PILLOW_NAME[fmt] and image.size == (300, 200)
        assert getattr(image, "n_frames", 1) == (2 if fmt is Format.GIF else 1)
