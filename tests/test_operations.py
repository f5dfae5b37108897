"""Image operations through HTTP: effects against golden images, pad, radius, trim, watermark, smart and
face gravity, range validation, output control (lossless, colors, progressive, strip, Save-Data, AVIF
fallback) and the extra input/output formats. Every body is decoded and checked.

Goldens (tests/golden/, made by tests/make_golden.py with an independent numpy implementation) are compared
with a tolerance: the mean absolute difference per channel must stay under `MEAN_TOLERANCE` (2 of 255)
over the whole image and over the pixels the effect changes, and no channel value may be off by more than
`MAX_TOLERANCE`. Resampling filters and blur approximations differ by a level or two; a wrong effect
differs by tens.
"""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pillow_heif
import pytest
from PIL import Image
from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.pipeline import attention
from imgproxy.settings import SAMPLES_DIR, Settings
from tests import make_golden
from tests.conftest import decode

MakeClient = Callable[..., TestClient]
Colour = tuple[int, int, int]

PROBLEM = "application/problem+json"
RED: Colour = (255, 0, 0)
BLUE: Colour = (0, 0, 255)
CHELSEA = (451, 300)
SKY: Colour = (120, 140, 160)  # the flat background of the smart-crop scenes
BORDER: Colour = (250, 250, 250)
EXIF_MAKE, EXIF_MODEL, EXIF_ORIENTATION, EXIF_GPS = 0x010F, 0x0110, 0x0112, 0x8825


# --- the source root of this module: samples plus generated images ---


def _smart_scene(size: tuple[int, int], box: tuple[int, int, int, int], seed: int) -> Image.Image:
    """A flat background with a detailed (random noise) subject in `box`."""
    pixels = np.empty((size[1], size[0], 3), np.uint8)
    pixels[...] = SKY
    left, top, right, bottom = box
    rng = np.random.default_rng(seed)
    pixels[top:bottom, left:right] = rng.integers(0, 256, (bottom - top, right - left, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _gps_jpeg() -> bytes:
    """A camera-like JPEG: Make, Model, Orientation=6 and a GPS IFD with a position."""
    image = Image.new("RGB", (120, 80), (10, 120, 200))
    image.paste(RED, (0, 0, 20, 20))  # top-left marker: after orientation 6 it is top-right
    exif = Image.Exif()
    exif[EXIF_MAKE] = "TestMake"
    exif[EXIF_MODEL] = "TestModel"
    exif[EXIF_ORIENTATION] = 6
    gps = exif.get_ifd(EXIF_GPS)
    gps.update({1: "N", 2: (52.0, 22.0, 10.0), 3: "E", 4: (4.0, 53.0, 0.0)})
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def ops_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ops")
    for name in ("chelsea.png", "astronaut.png"):
        shutil.copy(SAMPLES_DIR / name, root / name)
    make_golden.watermark_image().save(root / "wm.png")
    Image.new("RGB", (200, 100), BLUE).save(root / "blue.png")
    Image.new("RGB", (64, 48), (30, 160, 90)).save(root / "flat.png")

    border = Image.new("RGB", (120, 90), BORDER)
    border.paste((200, 40, 40), (20, 10, 80, 70))
    border.paste((40, 40, 200), (50, 30, 70, 50))
    border.save(root / "border.png")
    faint = border.copy()
    faint.paste((245, 250, 250), (5, 30, 6, 40))  # 5 levels off the border colour
    faint.save(root / "faint.png")
    Image.new("RGB", (50, 40), (9, 9, 9)).save(root / "uniform.png")
    clear = Image.new("RGBA", (100, 80), (0, 0, 0, 0))
    clear.paste((0, 200, 0, 255), (30, 20, 60, 50))
    clear.save(root / "clear_border.png")

    sprite = Image.new("RGBA", (80, 60), (0, 0, 0, 0))
    sprite.paste((255, 0, 0, 255), (20, 20, 40, 40))
    sprite.save(root / "sprite.png")
    quarters = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    quarters.paste((200, 30, 30, 255), (0, 0, 32, 48))
    quarters.paste((30, 30, 200, 255), (32, 0, 48, 48))
    quarters.save(root / "quarters.png")
    photo = load(root / "chelsea.png").convert("RGB").resize((64, 43), Image.Resampling.LANCZOS)
    photo.putalpha(Image.linear_gradient("L").rotate(90).resize(photo.size))  # alpha ramps across
    photo.save(root / "alpha_photo.png")

    (root / "gps.jpg").write_bytes(_gps_jpeg())
    _smart_scene((400, 200), (300, 60, 380, 140), 1).save(root / "subject_right.png")
    _smart_scene((400, 200), (20, 60, 100, 140), 2).save(root / "subject_left.png")
    _smart_scene((200, 400), (120, 10, 180, 70), 3).save(root / "subject_top.png")

    pillow_heif.register_heif_opener()  # to write the HEIC source; the service registers it itself
    small = load(root / "chelsea.png").convert("RGB").resize((64, 43), Image.Resampling.LANCZOS)
    small.save(root / "small.png")
    for name, fmt, extra in INPUTS:
        small.save(root / name, fmt, **extra)
    return root


INPUTS: list[tuple[str, str, dict[str, Any]]] = [
    ("small.tiff", "TIFF", {}),
    ("small.bmp", "BMP", {}),
    ("small.ico", "ICO", {"sizes": [(64, 43)]}),
    ("small.webp", "WEBP", {"quality": 90}),
    ("small.avif", "AVIF", {"quality": 90}),
    ("small.heic", "HEIF", {"quality": 90}),
    ("small.gif", "GIF", {}),
    ("small.jpg", "JPEG", {"quality": 90}),
]


def _serve(root: Path, **groups: Any) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(_env_file=None, source={"local_root": root}, **groups))) as client:
        yield client


# One app per module for the read-only tests (starting an app costs ~0.1 s); tests that need a fresh
# result cache or other settings use `make_client`.
@pytest.fixture(scope="module")
def ops(ops_root: Path) -> Iterator[TestClient]:
    yield from _serve(ops_root)


@pytest.fixture(scope="module")
def wm_client(ops_root: Path) -> Iterator[TestClient]:
    # The goldens start from a Lanczos resize: the effects are compared over the same filter.
    yield from _serve(ops_root, watermark={"path": "wm.png"}, formats={"resample": "lanczos"})


# --- helpers ---


def fetch(client: TestClient, url: str, headers: dict[str, str] | None = None) -> tuple[Any, Image.Image]:
    response = client.get(url, headers=headers or {})
    assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:300]}"
    return response, decode(response.content)


def load(path: Path) -> Image.Image:
    """A file's image, fully read and closed."""
    with Image.open(path) as image:
        image.load()
        return image.copy()


def array(image: Image.Image, mode: str = "RGB") -> np.ndarray:
    return np.asarray(image.convert(mode), dtype=np.float64)


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"{a.shape} != {b.shape}"
    return float(np.abs(a - b).mean())


def assert_colour(actual: Any, expected: Colour, tolerance: float = 0, what: str = "") -> None:
    got = tuple(int(v) for v in actual)[:3]
    assert max(abs(g - e) for g, e in zip(got, expected, strict=True)) <= tolerance, f"{what}: {got} != {expected}"


def assert_problem(response: Any, param: str, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    if status == 400:
        assert body["param"] == param, body
        assert body["detail"].startswith(f"{param}:"), body
    return body


def crop_origin(output: Image.Image, scene: Image.Image) -> tuple[int, int]:
    """Where `output` sits inside `scene` (same scale), by template matching."""
    result = cv2.matchTemplate(
        np.asarray(scene.convert("RGB")), np.asarray(output.convert("RGB")), cv2.TM_SQDIFF_NORMED
    )
    score, _, location, _ = cv2.minMaxLoc(result)
    assert score < 0.01, f"the output is not a crop of the scene (score {score})"
    return int(location[0]), int(location[1])


# --- effects against the goldens ---


@pytest.mark.parametrize(
    ("setting", "filter_"), [(None, Image.Resampling.BICUBIC), ("lanczos", Image.Resampling.LANCZOS)]
)
def test_resample_setting_picks_the_final_filter(
    make_client: MakeClient, ops_root: Path, setting: str | None, filter_: Image.Resampling
) -> None:
    """The default filter is bicubic; `resample=lanczos` switches to Lanczos. Each output is closer to
    a plain Pillow resize with its own filter than to one with the other filter."""
    formats = {} if setting is None else {"resample": setting}
    client = make_client(source={"local_root": ops_root}, formats=formats)
    _, output = fetch(client, "/img/chelsea.png?fm=png&w=101")  # 451 → 101: reduce(2), then the filter
    source = load(SAMPLES_DIR / "chelsea.png").convert("RGB")
    size = output.size
    other = Image.Resampling.LANCZOS if filter_ is Image.Resampling.BICUBIC else Image.Resampling.BICUBIC
    own = mean_diff(array(output, "RGB"), array(source.resize(size, filter_, reducing_gap=2.0), "RGB"))
    wrong = mean_diff(array(output, "RGB"), array(source.resize(size, other, reducing_gap=2.0), "RGB"))
    assert own < 0.05 < wrong, (own, wrong)


@pytest.mark.parametrize("name", sorted(make_golden.GOLDENS))
def test_effect_matches_golden(wm_client: TestClient, name: str) -> None:
    query, _ = make_golden.GOLDENS[name]
    _, output = fetch(wm_client, f"/img/chelsea.png?fm=png&{query}")
    golden = load(make_golden.golden_path(name))
    assert output.size == golden.size
    mode = "RGBA" if golden.mode == "RGBA" else "RGB"
    assert output.mode in (mode, "RGBA")
    if output.mode != mode:  # an opaque golden: an alpha channel is allowed if it is all opaque
        assert (array(output, "RGBA")[..., 3] == 255).all()
    got, want = array(output, mode), array(golden, mode)
    overall = mean_diff(got, want)
    assert overall < make_golden.MEAN_TOLERANCE, f"{name}: mean |diff| {overall:.2f} over the image"
    worst = float(np.abs(got - want).max())
    assert worst <= make_golden.MAX_TOLERANCE, f"{name}: a channel is {worst:.0f} off"
    plain = make_golden.resized(golden.width)
    if plain.shape[:2] == want.shape[:2]:
        if mode == "RGBA":
            plain = np.dstack([plain, np.full(plain.shape[:2], 255.0)])
        changed = np.abs(want - plain).max(axis=2) > 8  # the pixels the effect visibly changes
        assert changed.sum() >= 50, f"{name}: the golden barely differs from a plain resize"
        effect = float(np.abs(want - plain)[changed].mean())
        local = float(np.abs(got - want)[changed].mean())
        assert effect > 3 * make_golden.MEAN_TOLERANCE, f"{name}: the effect is too weak to test ({effect:.1f})"
        assert local < make_golden.MEAN_TOLERANCE, f"{name}: mean |diff| {local:.2f} where the effect acts"


@pytest.mark.parametrize("name", sorted(make_golden.GOLDENS))
def test_golden_files_match_their_generator(name: str) -> None:
    _, build = make_golden.GOLDENS[name]
    stored = load(make_golden.golden_path(name))
    fresh = build()
    assert (stored.size, stored.mode) == (fresh.size, fresh.mode)
    assert mean_diff(array(stored, stored.mode), array(fresh, fresh.mode)) < 0.01, "run tests/make_golden.py"


@pytest.mark.parametrize("query", ["brightness=1.5", "contrast=2", "saturation=0", "grayscale=1", "sharpen=3"])
def test_colour_effects_leave_alpha_untouched(ops: TestClient, query: str) -> None:
    _, plain = fetch(ops, "/img/alpha_photo.png?w=32&fm=png")
    _, changed = fetch(ops, f"/img/alpha_photo.png?w=32&fm=png&{query}")
    assert changed.mode == "RGBA"
    assert np.array_equal(array(changed, "RGBA")[..., 3], array(plain, "RGBA")[..., 3])
    assert mean_diff(array(changed), array(plain)) > 2, "the effect changed nothing"


def test_grayscale_png_is_neutral(ops: TestClient) -> None:
    _, output = fetch(ops, "/img/chelsea.png?w=80&fm=png&grayscale=1")
    rgb = array(output)
    assert np.array_equal(rgb[..., 0], rgb[..., 1])
    assert np.array_equal(rgb[..., 1], rgb[..., 2])


def test_blur_removes_more_detail_with_a_larger_sigma(ops: TestClient) -> None:
    def detail(query: str) -> float:
        grey = array(fetch(ops, f"/img/chelsea.png?w=120&fm=png{query}")[1], "L")
        return float(np.abs(np.diff(grey, axis=1)).mean())

    levels = [detail(""), detail("&blur=0.5"), detail("&blur=2"), detail("&blur=8")]
    assert levels == sorted(levels, reverse=True), levels
    assert levels[-1] < levels[0] / 4, levels


def test_sharpen_adds_detail(ops: TestClient) -> None:
    grey = [array(fetch(ops, f"/img/chelsea.png?w=120&fm=png{q}")[1], "L") for q in ("", "&sharpen=2")]
    plain, sharp = (float(np.abs(np.diff(g, axis=1)).mean()) for g in grey)
    assert sharp > 1.3 * plain


# --- pad ---


@pytest.mark.parametrize(
    ("pad", "sides"),
    [("7", (7, 7, 7, 7)), ("4,9", (4, 9, 4, 9)), ("1,2,3,4", (1, 2, 3, 4)), ("0,0,12,0", (0, 0, 12, 0))],
)
def test_pad_sizes_and_colour(ops: TestClient, pad: str, sides: tuple[int, int, int, int]) -> None:
    top, right, bottom, left = sides
    _, output = fetch(ops, f"/img/blue.png?w=100&fm=png&bg=ff0000&pad={pad}")
    assert output.size == (100 + left + right, 50 + top + bottom)
    pixels = array(output, "RGBA")
    inner = np.zeros(pixels.shape[:2], bool)
    inner[top : top + 50, left : left + 100] = True
    assert (pixels[inner] == (*BLUE, 255)).all()
    assert (pixels[~inner] == (*RED, 255)).all()


def test_pad_default_background(ops: TestClient) -> None:
    _, png = fetch(ops, "/img/blue.png?w=100&fm=png&pad=6")
    _, jpeg = fetch(ops, "/img/blue.png?w=100&fm=jpeg&pad=6")
    assert png.mode == "RGBA" and png.getpixel((0, 0))[3] == 0 and png.getpixel((50, 30))[3] == 255
    assert jpeg.size == png.size == (112, 62)
    assert_colour(jpeg.getpixel((0, 0)), (255, 255, 255), 4, "JPEG padding is white by default")
    assert_colour(jpeg.getpixel((56, 31)), BLUE, 4, "JPEG centre")


def test_pad_applies_after_resizing(ops: TestClient) -> None:
    """Padding is in output pixels: the same at any size (the watermark is placed after it)."""
    for width in (40, 160):
        _, output = fetch(ops, f"/img/blue.png?w={width}&fm=png&bg=ff0000&pad=5")
        assert output.size == (width + 10, width // 2 + 10)
        assert_colour(output.getpixel((2, output.height // 2)), RED)


# --- radius ---


def test_radius_makes_corners_transparent_in_png(ops: TestClient) -> None:
    _, plain = fetch(ops, "/img/chelsea.png?w=160&fm=png")
    _, output = fetch(ops, "/img/chelsea.png?w=160&fm=png&radius=20")
    assert output.mode == "RGBA" and output.size == plain.size == (160, 106)
    alpha = array(output, "RGBA")[..., 3]
    for x, y in [(0, 0), (159, 0), (0, 105), (159, 105), (3, 3), (156, 102)]:
        assert alpha[y, x] == 0, f"corner pixel {(x, y)} is not transparent"
    for x, y in [(20, 20), (80, 0), (0, 53), (159, 53), (80, 105), (139, 85)]:
        assert alpha[y, x] == 255, f"{(x, y)} inside the rounded rectangle is not opaque"
    centre = (slice(20, 86), slice(20, 140))
    assert np.array_equal(array(output)[centre], array(plain)[centre]), "the inside must be unchanged"


@pytest.mark.parametrize(("bg", "corner"), [("", (255, 255, 255)), ("&bg=00ff00", (0, 255, 0))])
def test_radius_corners_take_bg_in_jpeg(ops: TestClient, bg: str, corner: Colour) -> None:
    _, output = fetch(ops, f"/img/blue.png?fm=jpeg&radius=30{bg}")
    assert output.mode == "RGB" and output.size == (200, 100)
    for x, y in [(0, 0), (199, 0), (0, 99), (199, 99), (4, 4)]:
        assert_colour(output.getpixel((x, y)), corner, 24, f"corner {(x, y)}")  # JPEG chroma bleeds
    for x, y in [(100, 50), (100, 2), (2, 50), (30, 30)]:
        assert_colour(output.getpixel((x, y)), BLUE, 24, f"inside {(x, y)}")


def test_radius_larger_than_the_image_gives_a_stadium(ops: TestClient) -> None:
    _, output = fetch(ops, "/img/blue.png?fm=png&radius=4096")
    alpha = array(output, "RGBA")[..., 3]
    assert output.size == (200, 100)
    assert alpha[0, 100] == 255 and alpha[50, 100] == 255 and alpha[50, 1] > 0
    assert alpha[0, 0] == 0 and alpha[10, 10] == 0 and alpha[99, 199] == 0


# --- trim ---


def test_trim_removes_a_uniform_border_exactly(ops: TestClient, ops_root: Path) -> None:
    _, output = fetch(ops, "/img/border.png?fm=png&trim=0")
    expected = load(ops_root / "border.png").crop((20, 10, 80, 70))
    assert output.size == (60, 60)
    assert np.array_equal(array(output), array(expected))


@pytest.mark.parametrize(("trim", "size"), [(4, (75, 60)), (5, (60, 60)), (255, (120, 90))])
def test_trim_tolerance(ops: TestClient, trim: int, size: tuple[int, int]) -> None:
    """A faint line 5 levels off the border is content below trim=5 and border from trim=5 up;
    at 255 nothing differs by more than the tolerance, and nothing is trimmed."""
    _, output = fetch(ops, f"/img/faint.png?fm=png&trim={trim}")
    assert output.size == size


def test_trim_happens_before_fitting(ops: TestClient) -> None:
    _, output = fetch(ops, "/img/border.png?fm=png&trim=10&w=30")
    assert output.size == (30, 30)
    assert_colour(output.getpixel((0, 0)), (200, 40, 40), 2, "no border left after resizing")


def test_trim_leaves_a_uniform_image_alone(ops: TestClient) -> None:
    _, output = fetch(ops, "/img/uniform.png?fm=png&trim=10")
    assert output.size == (50, 40)


def test_trim_removes_a_transparent_border(ops: TestClient) -> None:
    _, output = fetch(ops, "/img/clear_border.png?fm=png&trim=0")
    assert output.size == (30, 30)
    assert (array(output, "RGBA") == (0, 200, 0, 255)).all()


def test_trim_keeps_only_what_differs_from_the_top_left_colour(ops: TestClient) -> None:
    _, output = fetch(ops, "/img/gps.jpg?fm=png&trim=40")
    assert 20 <= output.width <= 22 and 20 <= output.height <= 22, output.size  # the 20x20 red marker
    assert_colour(output.getpixel((10, 10)), RED, 40, "the marker")


# --- watermark ---

WM_ANCHORS = {
    "northwest": (0.0, 0.0),
    "north": (0.5, 0.0),
    "northeast": (1.0, 0.0),
    "west": (0.0, 0.5),
    "center": (0.5, 0.5),
    "east": (1.0, 0.5),
    "southwest": (0.0, 1.0),
    "south": (0.5, 1.0),
    "southeast": (1.0, 1.0),
}


def red_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The bounding box (inclusive) of the pixels red enough to be the watermark."""
    pixels = array(image)
    ys, xs = np.nonzero(pixels[..., 0] > 60)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


@pytest.mark.parametrize("gravity", list(WM_ANCHORS))
def test_watermark_position_by_gravity(wm_client: TestClient, gravity: str) -> None:
    """200x100 output, wm_s=0.2: the 40x20 mark (opaque 30x20) inset by 2% of the shorter side (2 px)."""
    _, output = fetch(wm_client, f"/img/blue.png?fm=png&wm=1&wm_o=1&wm_s=0.2&wm_g={gravity}")
    ax, ay = WM_ANCHORS[gravity]
    x = round(2 + (200 - 40 - 4) * ax)
    y = round(2 + (100 - 20 - 4) * ay)
    assert red_box(output) == (x, y, x + 29, y + 19), gravity
    assert_colour(output.getpixel((x + 10, y + 10)), RED, 0, "opaque watermark")
    assert_colour(output.getpixel((x + 35, y + 10)), BLUE, 0, "the mark's transparent part")


@pytest.mark.parametrize("opacity", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_watermark_opacity_blends(wm_client: TestClient, opacity: float) -> None:
    _, output = fetch(wm_client, f"/img/blue.png?fm=png&wm=1&wm_g=center&wm_s=0.2&wm_o={opacity}")
    expected = tuple(round(r * opacity + b * (1 - opacity)) for r, b in zip(RED, BLUE, strict=True))
    assert_colour(output.getpixel((100, 50)), expected, 1, f"opacity {opacity}")  # type: ignore[arg-type]
    if opacity == 0:
        assert (array(output) == BLUE).all()


@pytest.mark.parametrize(("scale", "width"), [(0.1, 20), (0.4, 80), (0.9, 180)])
def test_watermark_scales_with_the_output(wm_client: TestClient, scale: float, width: int) -> None:
    _, output = fetch(wm_client, f"/img/blue.png?fm=png&wm=1&wm_o=1&wm_g=northwest&wm_s={scale}")
    box = red_box(output)
    assert box is not None
    opaque_width, height = box[2] - box[0] + 1, box[3] - box[1] + 1
    assert abs(opaque_width - width * 3 / 4) <= 1, (scale, box)
    assert abs(height - width / 2) <= 1, (scale, box)


def test_watermark_on_a_jpeg(wm_client: TestClient) -> None:
    _, output = fetch(wm_client, "/img/blue.png?fm=jpeg&wm=1&wm_o=1&wm_g=center&wm_s=0.5")
    assert output.format == "JPEG"
    assert_colour(output.getpixel((90, 50)), RED, 12, "watermark centre")
    assert_colour(output.getpixel((20, 20)), BLUE, 12, "away from the watermark")


def test_watermark_changes_the_etag(wm_client: TestClient) -> None:
    plain = wm_client.get("/img/blue.png?fm=png")
    marked = wm_client.get("/img/blue.png?fm=png&wm=1")
    assert plain.headers["etag"] != marked.headers["etag"]


@pytest.mark.parametrize("path", ["../wm.png", "missing.png", "/etc/passwd"])
def test_watermark_path_must_be_a_file_under_the_root(make_client: MakeClient, ops_root: Path, path: str) -> None:
    with pytest.raises(ValueError, match="IMGPROXY_WATERMARK__PATH"):
        make_client(source={"local_root": ops_root}, watermark={"path": path})


# --- smart and face gravity ---


@pytest.mark.parametrize(
    ("name", "query", "subject"),
    [
        ("subject_right.png", "w=100&h=100", (300, 60, 380, 140)),
        ("subject_left.png", "w=100&h=100", (20, 60, 100, 140)),
        ("subject_right.png", "w=50&h=100", (300, 60, 380, 140)),
        ("subject_top.png", "w=100&h=100", (120, 10, 180, 70)),
    ],
)
def test_smart_keeps_an_off_centre_subject(
    ops: TestClient, ops_root: Path, name: str, query: str, subject: tuple[int, int, int, int]
) -> None:
    """Every scene is 400x200 or 200x400 and every request 100 px on its short side: a scale of 1/2."""
    scale = 0.5
    _, smart = fetch(ops, f"/img/{name}?fm=png&fit=cover&g=smart&{query}")
    _, centre = fetch(ops, f"/img/{name}?fm=png&fit=cover&{query}")
    scene = load(ops_root / name)
    scene = scene.resize((round(scene.width * scale), round(scene.height * scale)), Image.Resampling.LANCZOS)
    x, y = crop_origin(smart, scene)
    left, top, right, bottom = (round(v * scale) for v in subject)
    assert x <= left and right <= x + smart.width, f"subject {left}..{right} outside crop {x}..{x + smart.width}"
    assert y <= top and bottom <= y + smart.height, f"subject {top}..{bottom} outside crop {y}..{y + smart.height}"

    def busy(image: Image.Image) -> int:
        return int((np.abs(array(image) - SKY).sum(axis=2) > 30).sum())

    assert busy(smart) > 0.9 * busy(scene.crop((left, top, right, bottom)))
    assert busy(centre) < busy(smart) / 2, "the test scene must defeat a centre crop"


def detect_face(image: Image.Image) -> tuple[float, float, float, float]:
    """The largest frontal face OpenCV finds on the full-size source: left, top, right, bottom."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    grey = np.asarray(image.convert("L"))
    faces = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
    assert len(faces) >= 1, "the detector must find the astronaut's face"
    x, y, w, h = max(faces, key=lambda face: face[2] * face[3])
    return float(x), float(y), float(x + w), float(y + h)


@pytest.fixture(scope="module")
def astronaut_face() -> tuple[float, float, float, float]:
    return detect_face(load(SAMPLES_DIR / "astronaut.png"))


@pytest.mark.parametrize("query", ["w=100&h=300", "w=300&h=100", "w=40&h=300"])
def test_face_crop_keeps_the_face(
    ops: TestClient, astronaut_face: tuple[float, float, float, float], query: str
) -> None:
    response, output = fetch(ops, f"/img/astronaut.png?fm=png&fit=cover&g=face&{query}")
    assert response.headers["x-gravity"].startswith("face"), response.headers.get("x-gravity")
    scale = max(output.width, output.height) / 512  # the 512x512 source covers the box
    scene = load(SAMPLES_DIR / "astronaut.png").resize((round(512 * scale),) * 2, Image.Resampling.LANCZOS)
    x, y = crop_origin(output, scene)
    left, top, right, bottom = (v * scale for v in astronaut_face)
    centre = ((left + right) / 2, (top + bottom) / 2)
    assert x <= centre[0] <= x + output.width and y <= centre[1] <= y + output.height, (x, y, centre)
    if right - left <= output.width:
        assert x <= left and right <= x + output.width, "the whole face fits in the crop's width"
    if bottom - top <= output.height:
        assert y <= top and bottom <= y + output.height, "the whole face fits in the crop's height"
    # Centred on the face, unless the crop is pushed against the image edge.
    free_x = 0 < x < scene.width - output.width
    assert not free_x or abs(x + output.width / 2 - centre[0]) <= 3
    free_y = 0 < y < scene.height - output.height
    assert not free_y or abs(y + output.height / 2 - centre[1]) <= 3


def test_face_crop_beats_a_centre_crop_on_a_banner(
    ops: TestClient, astronaut_face: tuple[float, float, float, float]
) -> None:
    _, centre = fetch(ops, "/img/astronaut.png?fm=png&fit=cover&w=300&h=100")
    scene = load(SAMPLES_DIR / "astronaut.png").resize((300, 300), Image.Resampling.LANCZOS)
    _, y = crop_origin(centre, scene)
    top, bottom = astronaut_face[1] * 300 / 512, astronaut_face[3] * 300 / 512
    assert not (y <= top and bottom <= y + 100), "a centre crop keeps the face: the face test proves nothing"


@pytest.fixture
def no_opencv(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make `import cv2` fail for the service, as without the `faces` extra."""
    attention._detector.cache_clear()
    monkeypatch.setitem(sys.modules, "cv2", None)
    yield
    attention._detector.cache_clear()


@pytest.mark.usefixtures("no_opencv")
def test_face_without_a_detector_falls_back_to_smart(make_client: MakeClient, ops_root: Path) -> None:
    ops = make_client(source={"local_root": ops_root})  # a fresh result cache: nothing rendered with cv2
    assert attention.detect_faces(Image.new("RGB", (8, 8))) is None
    response, face = fetch(ops, "/img/subject_right.png?fm=png&fit=cover&g=face&w=100&h=100")
    gravity = response.headers["x-gravity"]
    assert gravity.startswith("smart") and "unavailable" in gravity, gravity
    _, smart = fetch(ops, "/img/subject_right.png?fm=png&fit=cover&g=smart&w=100&h=100")
    assert np.array_equal(array(face), array(smart))


def test_face_without_a_face_falls_back_to_smart(ops: TestClient) -> None:
    response, face = fetch(ops, "/img/subject_left.png?fm=png&fit=cover&g=face&w=100&h=100")
    assert response.headers["x-gravity"] == "smart; no face found"
    _, smart = fetch(ops, "/img/subject_left.png?fm=png&fit=cover&g=smart&w=100&h=100")
    assert np.array_equal(array(face), array(smart))


@pytest.mark.parametrize("query", ["g=face&w=100", "g=smart&fit=cover&w=100&h=100", "fit=cover&w=100&h=100"])
def test_no_gravity_header_unless_a_face_was_asked_for_a_cover_crop(ops: TestClient, query: str) -> None:
    response, _ = fetch(ops, f"/img/astronaut.png?fm=png&{query}")
    assert "x-gravity" not in response.headers


# --- range validation ---

WITHOUT_WATERMARK = [
    ("blur=0", "blur"),
    ("blur=101", "blur"),
    ("blur=-1", "blur"),
    ("blur=abc", "blur"),
    ("sharpen=0", "sharpen"),
    ("sharpen=11", "sharpen"),
    ("brightness=5", "brightness"),
    ("brightness=-0.5", "brightness"),
    ("contrast=4.01", "contrast"),
    ("saturation=x", "saturation"),
    ("grayscale=2", "grayscale"),
    ("pad=1,2,3", "pad"),
    ("pad=1,,2", "pad"),
    ("pad=-1", "pad"),
    ("pad=1,2,3,4,5", "pad"),
    ("pad=99999", "pad"),
    ("radius=0", "radius"),
    ("radius=4097", "radius"),
    ("radius=1.5", "radius"),
    ("trim=256", "trim"),
    ("trim=-1", "trim"),
    ("frame=-1", "frame"),
    ("frame=x", "frame"),
    ("colors=1", "colors"),
    ("colors=257", "colors"),
    ("lossless=2", "lossless"),
    ("progressive=yes", "progressive"),
    ("strip=2", "strip"),
    ("g=middle", "g"),
    ("fm=bmp", "fm"),
    ("wm=1", "wm"),  # no watermark configured
    ("wm_o=0.5", "wm_o"),  # tuning without wm=1
    ("wm_g=north", "wm_g"),
    ("wm_s=0.5", "wm_s"),
]
WITH_WATERMARK = [
    ("wm=2", "wm"),
    ("wm=0&wm_o=0.5", "wm_o"),
    ("wm=1&wm_o=1.5", "wm_o"),
    ("wm=1&wm_o=-0.1", "wm_o"),
    ("wm=1&wm_s=0", "wm_s"),
    ("wm=1&wm_s=1.5", "wm_s"),
    ("wm=1&wm_g=smart", "wm_g"),
    ("wm=1&wm_g=focal", "wm_g"),
    ("wm=1&wm_g=up", "wm_g"),
]


@pytest.mark.parametrize(("query", "param"), WITHOUT_WATERMARK)
def test_bad_value_is_a_400_naming_the_parameter(ops: TestClient, query: str, param: str) -> None:
    assert_problem(ops.get(f"/img/chelsea.png?w=50&{query}"), param)


@pytest.mark.parametrize(("query", "param"), WITH_WATERMARK)
def test_bad_watermark_value_is_a_400(wm_client: TestClient, query: str, param: str) -> None:
    assert_problem(wm_client.get(f"/img/chelsea.png?w=50&{query}"), param)


@pytest.mark.parametrize(
    "query",
    [
        "blur=0.1",
        "blur=100",
        "sharpen=10",
        "brightness=0",
        "contrast=4",
        "saturation=0.000001",
        "pad=0",
        "radius=4096",
        "trim=255",
        "frame=0",
        "colors=2&fm=png",
        "colors=256&fm=gif",
        "lossless=1&fm=webp",
        "progressive=0&fm=jpeg",
        "strip=0",
        "grayscale=0",
    ],
)
def test_boundary_values_are_accepted(ops: TestClient, query: str) -> None:
    fetch(ops, f"/img/chelsea.png?w=50&{query}")


def test_watermark_bounds_are_accepted(wm_client: TestClient) -> None:
    for query in ("wm=1&wm_o=0&wm_s=0.01&wm_g=northwest", "wm=1&wm_o=1&wm_s=1&wm_g=center", "wm=0"):
        fetch(wm_client, f"/img/chelsea.png?w=50&fm=png&{query}")


# --- output control ---


@pytest.mark.parametrize("name", ["flat.png", "chelsea.png"])
def test_lossless_webp_is_exact(ops: TestClient, name: str) -> None:
    _, png = fetch(ops, f"/img/{name}?w=40&fm=png")
    _, webp = fetch(ops, f"/img/{name}?w=40&fm=webp&lossless=1")
    _, lossy = fetch(ops, f"/img/{name}?w=40&fm=webp")
    assert webp.format == "WEBP" and webp.size == png.size
    assert mean_diff(array(webp), array(png)) == 0
    if name == "flat.png":
        assert (array(webp) == (30, 160, 90)).all()
    else:
        assert mean_diff(array(lossy), array(png)) > 0.5, "lossy WebP should not be exact"


def test_lossless_png_is_exact_and_avif_nearly(ops: TestClient) -> None:
    _, png = fetch(ops, "/img/chelsea.png?w=160&fm=png&lossless=1")
    source = load(SAMPLES_DIR / "chelsea.png").convert("RGB")
    reference = source.resize(png.size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    assert mean_diff(array(png), array(reference)) == 0, "a plain bicubic resize (the default), losslessly"
    _, avif = fetch(ops, "/img/chelsea.png?w=160&fm=avif&lossless=1")
    _, lossy = fetch(ops, "/img/chelsea.png?w=160&fm=avif")
    assert avif.format == "AVIF"
    exact = mean_diff(array(avif), array(png))
    assert exact < 2, "lossless AVIF: only the RGB/YUV rounding may differ"
    assert exact < mean_diff(array(lossy), array(png))


@pytest.mark.parametrize(("fm", "colors"), [("png", 2), ("png", 16), ("png", 256), ("gif", 8), ("gif", 64)])
def test_colors_quantizes_to_a_palette(ops: TestClient, fm: str, colors: int) -> None:
    _, output = fetch(ops, f"/img/chelsea.png?w=120&fm={fm}&colors={colors}")
    _, full = fetch(ops, "/img/chelsea.png?w=120&fm=png")
    assert output.mode == "P"
    used = output.convert("RGB").getcolors(maxcolors=1024)
    assert used is not None and len(used) <= colors
    assert mean_diff(array(output), array(full)) < 40 / colors**0.5 + 2, "the palette must still look like the image"


def test_colors_keeps_png_transparency(ops: TestClient) -> None:
    _, output = fetch(ops, "/img/quarters.png?w=32&fm=png&colors=16")
    rgba = array(output, "RGBA")
    assert output.mode == "P"
    assert_colour(rgba[12, 4], (200, 30, 30), 3, "red quarter")
    assert_colour(rgba[12, 20], (30, 30, 200), 3, "blue quarter")
    assert rgba[12, 28, 3] == 0, "the transparent quarter"


def test_colors_keeps_gif_colours_of_an_rgba_image(ops: TestClient) -> None:
    _, output = fetch(ops, "/img/quarters.png?w=32&fm=gif&colors=16")
    rgba = array(output, "RGBA")
    assert_colour(rgba[12, 4], (200, 30, 30), 3, "red quarter")
    assert_colour(rgba[12, 20], (30, 30, 200), 3, "blue quarter")
    assert rgba[12, 28, 3] == 0, "the transparent quarter"


def test_gif_output_keeps_nearly_transparent_pixels_transparent(ops: TestClient) -> None:
    _, png = fetch(ops, "/img/sprite.png?w=40&fm=png")
    _, gif = fetch(ops, "/img/sprite.png?w=40&fm=gif")
    png_alpha, gif_alpha = array(png, "RGBA")[..., 3], array(gif, "RGBA")[..., 3]
    assert (gif_alpha[png_alpha >= 192] == 255).all(), "the sprite itself is opaque"
    speckles = int(((png_alpha < 64) & (gif_alpha > 0)).sum())
    assert speckles == 0, f"{speckles} nearly transparent pixels became opaque around the sprite"


@pytest.mark.parametrize(("query", "progressive"), [("", True), ("&progressive=1", True), ("&progressive=0", False)])
def test_progressive_toggle(ops: TestClient, query: str, progressive: bool) -> None:
    _, output = fetch(ops, f"/img/chelsea.png?w=120&fm=jpeg{query}")
    assert output.format == "JPEG"
    assert bool(output.info.get("progressive")) is progressive
    assert bool(output.info.get("progression")) is progressive


@pytest.mark.parametrize(("fm", "pil_format"), [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("avif", "AVIF")])
def test_strip_0_keeps_exif_without_gps(ops: TestClient, fm: str, pil_format: str) -> None:
    response, output = fetch(ops, f"/img/gps.jpg?w=60&fm={fm}&strip=0")
    assert output.format == pil_format
    assert output.size == (60, 90), "orientation 6 is applied to the pixels"
    assert_colour(output.getpixel((55, 5)), RED, 40, "the marker is top-right once upright")
    exif = output.getexif()
    assert exif.get(EXIF_MAKE) == "TestMake" and exif.get(EXIF_MODEL) == "TestModel"
    assert exif.get(EXIF_ORIENTATION, 1) == 1, "the orientation tag must not rotate the pixels again"
    assert EXIF_GPS not in exif and not exif.get_ifd(EXIF_GPS)
    assert b"GPS" not in response.content and b"TestMake" in response.content


@pytest.mark.parametrize("fm", ["jpeg", "png", "webp", "avif"])
def test_default_strips_all_metadata(ops: TestClient, fm: str) -> None:
    for query in ("", "&strip=1"):
        response, output = fetch(ops, f"/img/gps.jpg?w=60&fm={fm}{query}")
        assert not output.getexif() and "exif" not in output.info
        assert b"TestMake" not in response.content


def jpeg_tables(quality: int) -> dict[int, list[int]]:
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "JPEG", quality=quality)
    return {k: list(v) for k, v in decode(out.getvalue()).quantization.items()}  # type: ignore[attr-defined]


def test_save_data_lowers_the_default_jpeg_quality(ops: TestClient) -> None:
    normal, plain = fetch(ops, "/img/chelsea.png?w=160&fm=jpeg")
    saving, reduced = fetch(ops, "/img/chelsea.png?w=160&fm=jpeg", {"Save-Data": "on"})
    sizes = f"normal {len(normal.content)} B, Save-Data {len(saving.content)} B"
    assert len(saving.content) < len(normal.content), sizes
    assert {k: list(v) for k, v in plain.quantization.items()} == jpeg_tables(80)  # type: ignore[attr-defined]
    assert {k: list(v) for k, v in reduced.quantization.items()} == jpeg_tables(60)  # type: ignore[attr-defined]
    assert normal.headers["etag"] != saving.headers["etag"]
    for response in (normal, saving):
        assert "save-data" in response.headers["vary"].lower()


def test_save_data_lowers_negotiated_webp(ops: TestClient) -> None:
    normal, _ = fetch(ops, "/img/chelsea.png?w=160", {"Accept": "image/webp"})
    saving, output = fetch(ops, "/img/chelsea.png?w=160", {"Accept": "image/webp", "Save-Data": "on"})
    assert output.format == "WEBP"
    assert len(saving.content) < len(normal.content)
    assert [v.strip().lower() for v in saving.headers["vary"].split(",")] == ["accept", "save-data"]


def test_save_data_drop_is_a_setting(make_client: MakeClient, ops_root: Path) -> None:
    client = make_client(source={"local_root": ops_root}, formats={"save_data_quality_drop": 50})
    _, reduced = fetch(client, "/img/chelsea.png?w=160&fm=jpeg", {"Save-Data": "on"})
    assert {k: list(v) for k, v in reduced.quantization.items()} == jpeg_tables(30)  # type: ignore[attr-defined]


def test_save_data_with_explicit_quality_changes_nothing(ops: TestClient) -> None:
    normal, _ = fetch(ops, "/img/chelsea.png?w=160&fm=jpeg&q=70")
    saving, _ = fetch(ops, "/img/chelsea.png?w=160&fm=jpeg&q=70", {"Save-Data": "on"})
    assert saving.content == normal.content
    assert saving.headers["etag"] == normal.headers["etag"]
    assert saving.headers["x-cache"] == "HIT"
    assert "save-data" not in saving.headers.get("vary", "").lower()


@pytest.mark.parametrize("value", ["off", "", "1"])
def test_save_data_other_values_are_ignored(ops: TestClient, value: str) -> None:
    normal = ops.get("/img/chelsea.png?w=160&fm=jpeg")
    other = ops.get("/img/chelsea.png?w=160&fm=jpeg", headers={"Save-Data": value})
    assert other.headers["etag"] == normal.headers["etag"] and other.content == normal.content


def test_negotiated_avif_over_the_megapixel_budget_falls_back_to_webp(make_client: MakeClient, ops_root: Path) -> None:
    client = make_client(source={"local_root": ops_root}, formats={"avif_max_megapixels": 0.01})
    response, output = fetch(client, "/img/chelsea.png?w=160", {"Accept": "image/avif,image/webp"})
    assert response.headers["content-type"] == "image/webp" and output.format == "WEBP"  # 160x106 > 0.01 MP
    assert response.headers["x-format-fallback"] == "avif -> webp"
    assert "accept" in response.headers["vary"].lower()
    small, output = fetch(client, "/img/chelsea.png?w=80", {"Accept": "image/avif"})  # 80x53 < 0.01 MP
    assert small.headers["content-type"] == "image/avif" and output.format == "AVIF"
    assert "x-format-fallback" not in small.headers
    explicit, output = fetch(client, "/img/chelsea.png?w=160&fm=avif")
    assert explicit.headers["content-type"] == "image/avif" and output.format == "AVIF", "explicit fm is obeyed"


# --- formats ---


@pytest.mark.parametrize("name", [name for name, _, _ in INPUTS])
def test_input_format_converts_to_png(ops: TestClient, name: str) -> None:
    _, output = fetch(ops, f"/img/{name}?w=32&fm=png")
    _, reference = fetch(ops, "/img/small.png?w=32&fm=png")
    assert (output.format, output.size, output.mode) == ("PNG", (32, 22), "RGB")
    tolerance = 12 if name.endswith(".gif") else 6  # GIF: a 256-colour palette; the others: lossy or exact
    assert mean_diff(array(output), array(reference)) < tolerance


def test_heic_output(ops: TestClient) -> None:
    response, output = fetch(ops, "/img/chelsea.png?w=64&fm=heic")
    _, png = fetch(ops, "/img/chelsea.png?w=64&fm=png")
    assert response.headers["content-type"] == "image/heic"
    assert (output.format, output.size, output.mode) == ("HEIF", (64, 43), "RGB")
    assert mean_diff(array(output), array(png)) < 8
    alias = ops.get("/img/chelsea.png?w=64&fm=heif")
    assert alias.headers["etag"] == response.headers["etag"] and alias.content == response.content


def test_heic_is_documented_when_available(ops: TestClient) -> None:
    spec = ops.get("/openapi.json").json()
    operation = spec["paths"]["/img/{path}"]["get"]
    assert "image/heic" in operation["responses"]["200"]["content"]
    fm = next(p for p in operation["parameters"] if p["name"] == "fm")
    assert "heic" in fm["schema"]["enum"] and "blurhash" in fm["schema"]["enum"]
