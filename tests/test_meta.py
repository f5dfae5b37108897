"""`/meta/{path}` (facts and placeholders as JSON) and `/img/{path}?fm=blurhash`, through HTTP.

BlurHash is cross-checked against the `blurhash` package (the pure-Python port of the reference
implementation): exactly on images small enough that no resampling is involved, and component by
component on a photo. `/meta` is also checked for caching (ETag, 304, X-Cache), signing, its OpenAPI
schema and its error documents.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blurhash as reference
import numpy as np
import pillow_heif
import pytest
from PIL import Image, ImageOps
from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.openapi import ImageFacts
from imgproxy.pipeline import blurhash as ours
from imgproxy.settings import SAMPLES_DIR, Settings
from imgproxy.signing import sign
from tests.conftest import IMAGES, assert_problem, decode

MakeClient = Callable[..., TestClient]

PROBLEM = "application/problem+json"
KEY = "meta-signing-key-7f3a9c21XYZ"
FIELDS = {
    "width",
    "height",
    "format",
    "mode",
    "has_alpha",
    "frames",
    "orientation",
    "icc",
    "bytes",
    "dominant_color",
    "blurhash",
    "lqip",
}
BASE83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"


def _gradient(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth colour ramps plus a little noise: a realistic, deterministic test picture."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    pixels = np.stack(
        [255 * xs / max(width - 1, 1), 255 * ys / max(height - 1, 1), 128 + 100 * np.sin(xs / 3.0 + ys / 5.0)],
        axis=2,
    )
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def meta_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("meta")
    shutil.copy(SAMPLES_DIR / "chelsea.png", root / "chelsea.png")
    shutil.copy(SAMPLES_DIR / "coffee.png", root / "coffee.png")
    shutil.copy(IMAGES / "Landscape_6.jpg", root / "Landscape_6.jpg")
    shutil.copy(IMAGES / "Landscape_1.jpg", root / "Landscape_1.jpg")
    _gradient((32, 24), 1).save(root / "tiny.png")
    _gradient((20, 30), 2).save(root / "tiny_portrait.png")
    small = _gradient((64, 48), 3)
    small.save(root / "small.png")
    pillow_heif.register_heif_opener()
    for name, fmt in [
        ("small.jpg", "JPEG"),
        ("small.webp", "WEBP"),
        ("small.avif", "AVIF"),
        ("small.gif", "GIF"),
        ("small.tiff", "TIFF"),
        ("small.bmp", "BMP"),
        ("small.ico", "ICO"),
        ("small.heic", "HEIF"),
    ]:
        small.save(root / name, fmt)
    frames = [Image.new("RGB", (40, 30), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(root / "three.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(root / "three.webp", save_all=True, append_images=frames[1:], duration=100, loop=0)

    two = Image.new("RGB", (100, 100), (0, 0, 255))
    two.paste((255, 0, 0), (0, 0, 100, 60))
    two.save(root / "red_blue.png")
    clear = Image.new("RGBA", (100, 100), (0, 200, 0, 0))
    clear.paste((255, 0, 0, 255), (0, 0, 100, 30))
    clear.save(root / "mostly_clear.png")
    palette = Image.new("P", (50, 50), 0)
    palette.putpalette([255, 0, 255] + [0, 128, 0] * 255)
    palette.paste(1, (10, 10, 40, 40))
    palette.save(root / "palette_trns.png", transparency=0)
    Image.new("LA", (32, 32), (100, 128)).save(root / "grey_alpha.png")
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    (root / "not_an_image.jpg").write_bytes(b"<html>not an image</html>")
    return root


def _serve(root: Path, **groups: Any) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(_env_file=None, source={"local_root": root}, **groups))) as client:
        yield client


@pytest.fixture(scope="module")
def meta(meta_root: Path) -> Iterator[TestClient]:
    yield from _serve(meta_root)


def facts(client: TestClient, path: str) -> dict[str, Any]:
    response = client.get(f"/meta/{path}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == FIELDS
    ImageFacts.model_validate(body)  # the schema the OpenAPI document publishes
    return body


def load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def pixel_list(image: Image.Image) -> list[list[list[int]]]:
    """What the reference encoder takes: rows of [r, g, b]."""
    rows: list[list[list[int]]] = np.asarray(image.convert("RGB")).tolist()
    return rows


def decode_hash(text: str) -> tuple[int, int, list[int], list[int]]:
    """(x components, y components, DC as sRGB, quantised AC values) of a BlurHash."""
    x, y = reference.components(text)
    value = reference.blurhash.base83_decode
    dc = value(text[2:6])
    acs = [value(text[4 + 2 * i : 6 + 2 * i]) for i in range(1, x * y)]
    return x, y, [dc >> 16, (dc >> 8) & 255, dc & 255], acs


# --- the facts ---


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("chelsea.png", {"width": 451, "height": 300, "format": "png", "mode": "RGB", "has_alpha": False}),
        ("Landscape_6.jpg", {"width": 1800, "height": 1200, "format": "jpeg", "orientation": 6}),
        ("Landscape_1.jpg", {"width": 1800, "height": 1200, "format": "jpeg", "orientation": 1}),
        ("three.gif", {"width": 40, "height": 30, "format": "gif", "frames": 3}),
        ("three.webp", {"width": 40, "height": 30, "format": "webp", "frames": 3}),
        ("palette_trns.png", {"mode": "P", "has_alpha": True, "frames": 1}),
        ("grey_alpha.png", {"mode": "LA", "has_alpha": True}),
        ("mostly_clear.png", {"mode": "RGBA", "has_alpha": True}),
        ("cmyk.jpg", {"mode": "CMYK", "has_alpha": False, "format": "jpeg"}),
        ("small.jpg", {"format": "jpeg", "width": 64, "height": 48}),
        ("small.webp", {"format": "webp"}),
        ("small.avif", {"format": "avif"}),
        ("small.gif", {"format": "gif", "mode": "P", "frames": 1}),
        ("small.tiff", {"format": "tiff"}),
        ("small.bmp", {"format": "bmp"}),
        ("small.ico", {"format": "ico"}),
        ("small.heic", {"format": "heif", "width": 64, "height": 48, "has_alpha": False}),
    ],
)
def test_facts(meta: TestClient, meta_root: Path, path: str, expected: dict[str, Any]) -> None:
    body = facts(meta, path)
    for name, value in expected.items():
        assert body[name] == value, f"{path}: {name} = {body[name]!r}"
    assert body["bytes"] == (meta_root / path).stat().st_size
    assert body["orientation"] == expected.get("orientation", body["orientation"])
    assert 1 <= body["orientation"] <= 8


def test_icc_profile_description(meta: TestClient) -> None:
    assert facts(meta, "chelsea.png")["icc"] == "sRGB IEC61966-2.1"
    assert facts(meta, "small.png")["icc"] is None


def test_orientation_swaps_width_and_height(meta: TestClient) -> None:
    """Landscape_6 is stored 1200x1800 with orientation 6: the facts are about the upright image."""
    body = facts(meta, "Landscape_6.jpg")
    with Image.open(IMAGES / "Landscape_6.jpg") as stored:
        assert stored.size == (1200, 1800)
    assert (body["width"], body["height"]) == (1800, 1200)
    lqip = lqip_image(body["lqip"])
    assert lqip.width > lqip.height, "the placeholder is upright too"


@pytest.mark.parametrize(("path", "colour"), [("red_blue.png", "#ff0000"), ("three.gif", "#ff0000")])
def test_dominant_colour(meta: TestClient, path: str, colour: str) -> None:
    assert facts(meta, path)["dominant_color"] == colour


def test_dominant_colour_of_a_photo_is_one_of_its_colours(meta: TestClient) -> None:
    value = facts(meta, "chelsea.png")["dominant_color"]
    assert re.fullmatch(r"#[0-9a-f]{6}", value)
    rgb = np.array([int(value[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    pixels = np.asarray(load(SAMPLES_DIR / "chelsea.png").convert("RGB"), dtype=np.float64).reshape(-1, 3)
    near = (np.abs(pixels - rgb).max(axis=1) <= 24).mean()
    assert near > 0.10, f"{value} should describe a good part of the picture ({near:.0%} of pixels near it)"


def test_transparent_pixels_do_not_vote_for_the_dominant_colour(meta: TestClient) -> None:
    assert facts(meta, "mostly_clear.png")["dominant_color"] == "#ff0000"


def lqip_image(uri: str) -> Image.Image:
    prefix = "data:image/webp;base64,"
    assert uri.startswith(prefix)
    image = decode(base64.b64decode(uri[len(prefix) :], validate=True))
    assert image.format == "WEBP"
    return image


@pytest.mark.parametrize("path", ["chelsea.png", "red_blue.png", "tiny_portrait.png", "Landscape_6.jpg", "three.gif"])
def test_lqip_is_a_tiny_webp_of_the_image(meta: TestClient, meta_root: Path, path: str) -> None:
    body = facts(meta, path)
    lqip = lqip_image(body["lqip"])
    assert 16 <= max(lqip.size) <= 32, lqip.size
    assert abs(lqip.width / lqip.height - body["width"] / body["height"]) < 0.15
    assert len(body["lqip"]) < 1500, "a placeholder is a few hundred bytes"
    source = ImageOps.exif_transpose(load(meta_root / path))  # upright, as the facts are
    reduced = source.convert("RGB").resize(lqip.size, Image.Resampling.BOX)
    difference = np.abs(np.asarray(lqip.convert("RGB"), float) - np.asarray(reduced, float)).mean()
    assert difference < 20, f"{path}: the placeholder does not look like the image ({difference:.1f})"


# --- BlurHash ---


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("components", [(4, 3), (1, 1), (9, 9), (3, 5), (5, 2)])
def test_encoder_matches_the_reference(seed: int, components: tuple[int, int]) -> None:
    image = _gradient((24, 17), seed)
    assert ours.encode(image, *components) == reference.encode(pixel_list(image), *components)


@pytest.mark.parametrize("components", [(0, 3), (4, 10)])
def test_encoder_refuses_bad_component_counts(components: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=r"1\.\.9"):
        ours.encode(_gradient((8, 8), 0), *components)


@pytest.mark.parametrize("path", ["tiny.png", "tiny_portrait.png"])
def test_blurhash_format_matches_the_reference_exactly(meta: TestClient, meta_root: Path, path: str) -> None:
    """At most 32 px: nothing is resampled, so the reference gives the very same string."""
    response = meta.get(f"/img/{path}?fm=blurhash")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    expected = reference.encode(pixel_list(load(meta_root / path)), 4, 3)
    assert response.text == expected
    assert facts(meta, path)["blurhash"] == expected, "/meta gives the same hash"


@pytest.mark.parametrize(("path", "exact"), [("chelsea.png", True), ("coffee.png", True), ("Landscape_1.jpg", False)])
def test_blurhash_of_a_photo_agrees_with_the_reference(
    meta: TestClient, meta_root: Path, path: str, exact: bool
) -> None:
    """The service hashes a 32 px copy (bilinear): for a PNG the reference on the same copy gives the same
    string. Against the reference on a finer 64 px copy the placeholders it decodes to look the same
    (mean difference under 12 levels: a 32 px analysis is a little coarser, and the AC digits are sensitive)."""
    text = meta.get(f"/img/{path}?fm=blurhash").text
    assert len(text) == 28 and set(text) <= set(BASE83)
    source = load(meta_root / path).convert("RGB")
    if exact:
        copy = source.copy()
        copy.thumbnail((32, 32), Image.Resampling.BILINEAR)
        assert text == reference.encode(pixel_list(copy), 4, 3)
    finer = source.copy()
    finer.thumbnail((64, 64), Image.Resampling.LANCZOS)
    expected = reference.encode(pixel_list(finer), 4, 3)
    assert decode_hash(text)[:2] == decode_hash(expected)[:2] == (4, 3)
    assert max(abs(a - b) for a, b in zip(decode_hash(text)[2], decode_hash(expected)[2], strict=True)) <= 8
    ours_pixels = np.asarray(reference.decode(text, 32, 24), dtype=np.float64)
    reference_pixels = np.asarray(reference.decode(expected, 32, 24), dtype=np.float64)
    difference = float(np.abs(ours_pixels - reference_pixels).mean())
    assert difference < 12, f"{text} vs {expected}: decoded placeholders differ by {difference:.1f}"
    assert decode_hash(facts(meta, path)["blurhash"])[:2] == (4, 3)


def test_blurhash_decodes_to_the_image_colours(meta: TestClient) -> None:
    text = meta.get("/img/red_blue.png?fm=blurhash").text
    pixels = np.asarray(reference.decode(text, 10, 10), dtype=np.float64)
    top, bottom = pixels[1].mean(axis=0), pixels[8].mean(axis=0)
    assert top[0] > 150 and top[2] < 120, f"top is red: {top}"
    assert bottom[2] > 150 and bottom[0] < 120, f"bottom is blue: {bottom}"


def test_blurhash_response_headers(meta: TestClient) -> None:
    first = meta.get("/img/chelsea.png?fm=blurhash")
    second = meta.get("/img/chelsea.png?fm=blurhash", headers={"Save-Data": "on", "Accept": "image/webp"})
    assert second.text == first.text
    assert second.headers["etag"] == first.headers["etag"], "Save-Data and Accept do not change a BlurHash"
    assert second.headers["x-cache"] == "HIT"
    assert "vary" not in first.headers
    revalidated = meta.get("/img/chelsea.png?fm=blurhash", headers={"If-None-Match": first.headers["etag"]})
    assert revalidated.status_code == 304 and revalidated.content == b""


def test_blurhash_of_an_animation_is_of_the_first_frame(meta: TestClient) -> None:
    _, _, dc, _ = decode_hash(meta.get("/img/three.gif?fm=blurhash").text)
    assert dc[0] > 200 and dc[1] < 40 and dc[2] < 40, dc
    _, _, dc, _ = decode_hash(meta.get("/img/three.gif?fm=blurhash&frame=2").text)
    assert dc[2] > 200 and dc[0] < 40, dc


# --- caching, signing, errors, documentation ---


def test_meta_is_cached_with_an_etag(meta: TestClient) -> None:
    first = meta.get("/meta/small.webp")
    second = meta.get("/meta/small.webp")
    assert first.status_code == second.status_code == 200
    assert second.headers["x-cache"] == "HIT" and second.content == first.content
    assert first.headers["etag"] == second.headers["etag"] and first.headers["etag"].startswith('"')
    assert "max-age" in first.headers["cache-control"]
    revalidated = meta.get("/meta/small.webp", headers={"If-None-Match": first.headers["etag"]})
    assert revalidated.status_code == 304 and revalidated.content == b""
    assert revalidated.headers["etag"] == first.headers["etag"]
    assert meta.get("/meta/small.webp", headers={"If-None-Match": '"other"'}).status_code == 200


def test_meta_etag_differs_from_the_image_etag(meta: TestClient) -> None:
    assert meta.get("/meta/small.png").headers["etag"] != meta.get("/img/small.png").headers["etag"]


def test_meta_follows_a_changed_source(make_client: MakeClient, tmp_path: Path) -> None:
    path = tmp_path / "changing.png"
    Image.new("RGB", (30, 20), (255, 0, 0)).save(path)
    client = make_client(source={"local_root": tmp_path})
    before = client.get("/meta/changing.png")
    Image.new("RGB", (60, 20), (0, 0, 255)).save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = client.get("/meta/changing.png")
    assert after.headers["etag"] != before.headers["etag"]
    assert after.headers["x-cache"] == "MISS"
    assert (after.json()["width"], after.json()["dominant_color"]) == (60, "#0000ff")


def test_head_meta(meta: TestClient) -> None:
    get = meta.get("/meta/small.png")
    head = meta.head("/meta/small.png")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["etag"] == get.headers["etag"]


def test_meta_is_signed_like_images(make_client: MakeClient, meta_root: Path) -> None:
    client = make_client(source={"local_root": meta_root}, security={"signing_keys": [KEY]})
    assert_problem(client.get("/meta/small.png"), 403)
    assert_problem(client.get("/meta/small.png?s=" + "A" * 43), 403)
    assert_problem(client.get(sign("/meta/chelsea.png", KEY.encode()).replace("chelsea", "small")), 403)
    signed = client.get(sign("/meta/small.png", KEY.encode()))
    assert signed.status_code == 200 and signed.json()["width"] == 64
    assert_problem(client.get(sign("/img/small.png", KEY.encode()).replace("/img/", "/meta/")), 403)
    body = assert_problem(client.get(sign("/meta/small.png?w=10", KEY.encode())), 400)
    assert body["param"] == "w"


@pytest.mark.parametrize(("query", "param"), [("w=10", "w"), ("fm=png", "fm"), ("preset=thumb", "preset")])
def test_meta_takes_no_options(meta: TestClient, query: str, param: str) -> None:
    body = assert_problem(meta.get(f"/meta/small.png?{query}"), 400)
    assert body["param"] == param and "no options" in body["detail"]


@pytest.mark.parametrize(("path", "status"), [("missing.png", 404), ("not_an_image.jpg", 415), ("../etc/passwd", 404)])
def test_meta_errors_are_problem_documents(meta: TestClient, path: str, status: int) -> None:
    response = meta.get(f"/meta/{path}")
    assert_problem(response, status)
    assert response.headers["cache-control"] == "no-store"


def test_meta_respects_the_pixel_budget(make_client: MakeClient, meta_root: Path) -> None:
    client = make_client(source={"local_root": meta_root}, limits={"max_source_pixels": 1000})
    assert_problem(client.get("/meta/chelsea.png"), 413)
    assert facts(client, "tiny.png")["width"] == 32  # 768 pixels: within the budget


def test_meta_is_documented_with_its_schema(meta: TestClient) -> None:
    spec = meta.get("/openapi.json").json()
    operation = spec["paths"]["/meta/{path}"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ImageFacts"}
    component = spec["components"]["schemas"]["ImageFacts"]
    assert set(component["properties"]) == FIELDS
    assert set(component["required"]) == FIELDS
    assert component["properties"]["dominant_color"]["pattern"] == "^#[0-9a-f]{6}$"
    for status in ("304", "400", "403", "404", "413", "415"):
        assert status in operation["responses"], status
    problem = operation["responses"]["400"]["content"]["application/problem+json"]["schema"]
    assert "param" in problem["properties"]
    assert "head" in spec["paths"]["/meta/{path}"]
