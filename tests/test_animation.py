"""Animated GIF and WebP through HTTP: every frame resized with the same geometry, durations, loop count and
GIF disposal kept; fm=auto chooses animated WebP or GIF; the frame and pixel budgets (first frame, or 413
in strict mode); frame=N. Every output is decoded frame by frame.

The sources are generated here (small, with a distinct colour per frame), except the real-world
`tests/images/animated.gif` (the test corpus' 400x400, 44-frame rotating earth) for the GIF-versus-WebP size.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.settings import Settings
from tests.conftest import assert_problem, decode

MakeClient = Callable[..., TestClient]
Colour = tuple[int, int, int]

PROBLEM = "application/problem+json"
CORPUS_GIF = Path(__file__).parent / "images" / "animated.gif"
COLOURS: list[Colour] = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
DURATIONS = [100, 200, 300, 400, 500, 600]
DISPOSALS = [2, 1, 2, 1, 2, 2]
LOOP = 3
SIZE = (80, 60)
FRAMES = len(COLOURS)


def _frames(size: tuple[int, int] = SIZE) -> list[Image.Image]:
    return [Image.new("RGB", size, colour) for colour in COLOURS]


def _save(frames: list[Image.Image], path: Path, fmt: str, **params: Any) -> None:
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], **params)


@pytest.fixture(scope="module")
def anim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("animations")
    frames = _frames()
    _save(frames, root / "steps.gif", "GIF", duration=DURATIONS, loop=LOOP, disposal=DISPOSALS)
    _save(frames, root / "steps.webp", "WEBP", duration=DURATIONS, loop=LOOP, lossless=True)
    _save(frames, root / "once.gif", "GIF", duration=DURATIONS)  # no loop extension: plays once

    # A red square moving 20 px right per frame on a transparent canvas.
    sprites = []
    for index in range(4):
        frame = Image.new("RGBA", SIZE, (0, 0, 0, 0))
        frame.paste((255, 0, 0, 255), (index * 20, 20, index * 20 + 20, 40))
        sprites.append(frame)
    _save(sprites, root / "sprite.gif", "GIF", duration=50, loop=0, disposal=2)

    # A uniform grey border around a content block whose colour changes per frame.
    bordered = []
    for colour in COLOURS[:3]:
        frame = Image.new("RGB", SIZE, (128, 128, 128))
        frame.paste(colour, (10, 5, 50, 45))
        bordered.append(frame)
    _save(bordered, root / "bordered.gif", "GIF", duration=100, loop=0)

    # Stored 80x40 with EXIF orientation 6: upright it is 40x80, the colour half on top.
    halves = []
    for colour in COLOURS[:3]:
        frame = Image.new("RGB", (80, 40), (255, 255, 255))
        frame.paste(colour, (0, 0, 40, 40))
        halves.append(frame)
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(halves, root / "oriented.webp", "WEBP", duration=100, loop=0, lossless=True, exif=exif.tobytes())

    Image.new("RGB", SIZE, (10, 20, 30)).save(root / "still.png")
    shutil.copy(CORPUS_GIF, root / "earth.gif")
    return root


def _serve(root: Path, **groups: Any) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(_env_file=None, source={"local_root": root}, **groups))) as client:
        yield client


@pytest.fixture(scope="module")
def anim(anim_root: Path) -> Iterator[TestClient]:
    yield from _serve(anim_root)


# --- helpers ---


def fetch(client: TestClient, url: str, accept: str | None = None) -> tuple[Any, Image.Image]:
    response = client.get(url, headers={"Accept": accept} if accept else {})
    assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:300]}"
    return response, decode(response.content)


def frame_facts(image: Image.Image) -> list[dict[str, Any]]:
    """Per frame: duration, GIF disposal, the RGBA pixels (each frame loaded before its info is read)."""
    facts = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        image.load()
        facts.append(
            {
                "duration": image.info.get("duration"),
                "disposal": getattr(image, "disposal_method", None),
                "pixels": np.asarray(image.convert("RGBA"), dtype=np.int64),
            }
        )
    return facts


def centre_colour(pixels: np.ndarray) -> Colour:
    height, width = pixels.shape[:2]
    r, g, b = (int(v) for v in pixels[height // 2, width // 2, :3])
    return (r, g, b)


def close(actual: Colour, expected: Colour, tolerance: int) -> bool:
    return max(abs(a - e) for a, e in zip(actual, expected, strict=True)) <= tolerance


# --- frames, durations, loop, disposal ---


@pytest.mark.parametrize(
    ("accept", "pil_format", "tolerance"), [(None, "GIF", 2), ("image/webp", "WEBP", 8), ("image/png", "GIF", 2)]
)
def test_animated_gif_keeps_every_frame(anim: TestClient, accept: str | None, pil_format: str, tolerance: int) -> None:
    response, output = fetch(anim, "/img/steps.gif?w=40", accept)
    assert output.format == pil_format and output.size == (40, 30)
    assert output.n_frames == FRAMES  # type: ignore[attr-defined]
    assert output.info.get("loop") == LOOP
    assert "accept" in response.headers["vary"].lower()
    facts = frame_facts(output)
    assert [f["duration"] for f in facts] == DURATIONS
    for index, (fact, colour) in enumerate(zip(facts, COLOURS, strict=True)):
        assert fact["pixels"].shape == (30, 40, 4)
        got = centre_colour(fact["pixels"])
        assert close(got, colour, tolerance), f"frame {index}: {got} != {colour}"
        assert (fact["pixels"][..., 3] == 255).all()
    if pil_format == "GIF":
        assert [f["disposal"] for f in facts] == DISPOSALS


@pytest.mark.parametrize(("fm", "pil_format"), [("gif", "GIF"), ("webp", "WEBP"), ("avif", "AVIF")])
def test_explicit_animated_formats(anim: TestClient, fm: str, pil_format: str) -> None:
    response, output = fetch(anim, f"/img/steps.gif?w=40&fm={fm}")
    assert output.format == pil_format and output.n_frames == FRAMES  # type: ignore[attr-defined]
    assert "accept" not in response.headers.get("vary", "").lower()
    facts = frame_facts(output)
    assert [f["duration"] for f in facts] == DURATIONS
    for index, (fact, colour) in enumerate(zip(facts, COLOURS, strict=True)):
        assert close(centre_colour(fact["pixels"]), colour, 8), f"frame {index}"


@pytest.mark.parametrize(("accept", "pil_format"), [(None, "GIF"), ("image/webp", "WEBP")])
def test_animated_webp_keeps_frames_and_loop(anim: TestClient, accept: str | None, pil_format: str) -> None:
    _, output = fetch(anim, "/img/steps.webp?w=40", accept)
    assert output.format == pil_format and output.size == (40, 30)
    assert output.n_frames == FRAMES  # type: ignore[attr-defined]
    assert output.info.get("loop") == LOOP
    for index, (fact, colour) in enumerate(zip(frame_facts(output), COLOURS, strict=True)):
        assert close(centre_colour(fact["pixels"]), colour, 8), f"frame {index}"


@pytest.mark.parametrize("fm", ["gif", "webp"])
def test_animated_webp_keeps_durations(anim: TestClient, fm: str) -> None:
    _, output = fetch(anim, f"/img/steps.webp?w=40&fm={fm}")
    assert [f["duration"] for f in frame_facts(output)] == DURATIONS


def test_gif_that_plays_once_still_plays_once(anim: TestClient) -> None:
    _, output = fetch(anim, "/img/once.gif?w=40&fm=gif")
    assert output.n_frames == FRAMES  # type: ignore[attr-defined]
    assert "loop" not in output.info, f"loop={output.info.get('loop')}: the source played once"


def test_negotiated_avif_animation_is_sent_as_webp(anim: TestClient) -> None:
    response, output = fetch(anim, "/img/steps.gif?w=40", "image/avif,image/webp")
    assert response.headers["content-type"] == "image/webp"
    assert response.headers["x-format-fallback"] == "avif -> webp"
    assert output.format == "WEBP" and output.n_frames == FRAMES  # type: ignore[attr-defined]


def test_animation_is_cached(anim: TestClient) -> None:
    first = anim.get("/img/steps.gif?w=24&fm=gif")
    second = anim.get("/img/steps.gif?w=24&fm=gif")
    assert second.headers["x-cache"] == "HIT" and second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]


def test_corpus_gif_becomes_a_much_smaller_animated_webp(anim: TestClient) -> None:
    gif_response, gif = fetch(anim, "/img/earth.gif?w=200")
    webp_response, webp = fetch(anim, "/img/earth.gif?w=200", "image/webp")
    sizes = f"animated.gif at w=200: GIF {len(gif_response.content):,} B, WebP {len(webp_response.content):,} B"
    assert (gif.format, webp.format) == ("GIF", "WEBP"), sizes
    assert gif.size == webp.size == (200, 200)
    assert gif.n_frames == webp.n_frames == 44, sizes  # type: ignore[attr-defined]
    assert gif.info.get("loop") == webp.info.get("loop") == 65535  # the source's own loop count
    assert len(webp_response.content) < 0.6 * len(gif_response.content), sizes
    gif_facts, webp_facts = frame_facts(gif), frame_facts(webp)
    assert [f["duration"] for f in gif_facts] == [f["duration"] for f in webp_facts] == [90] * 44
    for index in (0, 21, 43):  # the same picture in both, frame by frame
        a, b = gif_facts[index]["pixels"][..., :3], webp_facts[index]["pixels"][..., :3]
        assert float(np.abs(a - b).mean()) < 12, f"frame {index} differs between GIF and WebP ({sizes})"
    assert float(np.abs(gif_facts[0]["pixels"] - gif_facts[21]["pixels"]).mean()) > 5, "the earth rotates"


# --- per-frame geometry and steps ---


@pytest.mark.parametrize("fm", ["webp", "gif"])
def test_every_frame_gets_the_same_geometry(anim: TestClient, fm: str) -> None:
    """The sprite moves 20 px per frame at 80 px wide: 10 px per frame at 40; and in a 30x30 cover crop
    anchored west (of the 40x30 resize), the last position is out of the picture."""
    _, output = fetch(anim, f"/img/sprite.gif?w=40&fm={fm}")
    _, cropped = fetch(anim, f"/img/sprite.gif?w=30&h=30&fit=cover&g=west&fm={fm}")
    assert cropped.size == (30, 30)
    for index, (full, crop) in enumerate(zip(frame_facts(output), frame_facts(cropped), strict=True)):
        for pixels, width in ((full["pixels"], 40), (crop["pixels"], 30)):
            solid = pixels[..., 3] >= 192
            ys, xs = np.nonzero(solid)
            left = index * 10
            if left >= width:
                assert not solid.any(), f"frame {index}: the sprite is outside the crop"
                continue
            assert (xs.min(), xs.max(), ys.min(), ys.max()) == (left, left + 9, 10, 19), f"frame {index}"
            assert close(centre_colour(pixels[10:20, left : left + 10]), (255, 0, 0), 8)


def test_transparent_frames_stay_transparent_in_webp(anim: TestClient) -> None:
    _, output = fetch(anim, "/img/sprite.gif?w=40&fm=webp")
    for index, fact in enumerate(frame_facts(output)):
        alpha = fact["pixels"][..., 3]
        assert int((alpha >= 192).sum()) == 100, f"frame {index}: a 10x10 sprite"
        assert alpha[0, 0] == 0 and alpha[29, 39] == 0


def test_trim_applies_the_first_frame_box_to_every_frame(anim: TestClient) -> None:
    _, output = fetch(anim, "/img/bordered.gif?trim=0&fm=gif")
    assert output.size == (40, 40) and output.n_frames == 3  # type: ignore[attr-defined]
    for index, fact in enumerate(frame_facts(output)):
        pixels = fact["pixels"]
        assert (np.abs(pixels[..., :3] - COLOURS[index]).max(axis=2) <= 2).all(), f"frame {index} has a border"


@pytest.mark.parametrize(
    ("query", "check"),
    [
        ("grayscale=1", "neutral"),
        ("radius=10", "corners"),
        ("pad=5&bg=ffffff", "border"),
    ],
)
def test_effects_apply_to_every_frame(anim: TestClient, query: str, check: str) -> None:
    _, output = fetch(anim, f"/img/steps.gif?w=40&fm=webp&{query}")
    facts = frame_facts(output)
    assert len(facts) == FRAMES
    for index, fact in enumerate(facts):
        pixels = fact["pixels"]
        if check == "neutral":
            rgb = pixels[..., :3]
            assert int(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max()) <= 3, f"frame {index} has colour"
        elif check == "corners":
            assert pixels[0, 0, 3] == 0 and pixels[29, 39, 3] == 0 and pixels[15, 20, 3] == 255, f"frame {index}"
        else:
            assert pixels.shape[:2] == (40, 50)
            assert close(tuple(int(v) for v in pixels[1, 1, :3]), (255, 255, 255), 16), f"frame {index}"  # type: ignore[arg-type]
            assert close(centre_colour(pixels), COLOURS[index], 16), f"frame {index}"


def test_orientation_applies_to_every_frame(anim: TestClient) -> None:
    _, output = fetch(anim, "/img/oriented.webp?fm=webp")
    assert output.size == (40, 80)
    for index, fact in enumerate(frame_facts(output)):
        top, bottom = fact["pixels"][20, 20, :3], fact["pixels"][60, 20, :3]
        assert close(tuple(int(v) for v in top), COLOURS[index], 8), f"frame {index} top: {top}"  # type: ignore[arg-type]
        assert close(tuple(int(v) for v in bottom), (255, 255, 255), 8), f"frame {index} bottom: {bottom}"  # type: ignore[arg-type]


# --- budgets ---


@pytest.mark.parametrize(
    ("limits", "frames"),
    [
        ({"max_frames": 5}, 1),  # 6 frames over a budget of 5: the first frame only
        ({"max_frames": 6}, FRAMES),  # exactly at the budget
        ({"max_source_pixels": 80 * 60 * 5}, 1),  # each frame fits, all six do not
        ({"max_source_pixels": 80 * 60 * 6}, FRAMES),
    ],
)
def test_budget_over_all_frames(make_client: MakeClient, anim_root: Path, limits: dict[str, int], frames: int) -> None:
    client = make_client(source={"local_root": anim_root}, limits=limits)
    _, output = fetch(client, "/img/steps.gif?w=40&fm=gif")
    assert output.format == "GIF" and getattr(output, "n_frames", 1) == frames
    assert close(centre_colour(frame_facts(output)[0]["pixels"]), COLOURS[0], 2)
    if frames == 1:
        _, auto = fetch(client, "/img/steps.gif?w=40")  # fm=auto, legacy client: a still gives a JPEG
        assert auto.format == "JPEG" and close(centre_colour(np.asarray(auto)), COLOURS[0], 8)


@pytest.mark.parametrize("limits", [{"max_frames": 5}, {"max_source_pixels": 80 * 60 * 5}])
@pytest.mark.parametrize("accept", [None, "image/webp"])
def test_strict_animation_over_budget_is_a_413(
    make_client: MakeClient, anim_root: Path, limits: dict[str, int], accept: str | None
) -> None:
    client = make_client(source={"local_root": anim_root}, limits={**limits, "strict_animation": True})
    response = client.get("/img/steps.gif?w=40", headers={"Accept": accept} if accept else {})
    body = assert_problem(response, 413)
    assert "frame" in body["detail"]
    assert response.headers["cache-control"] == "no-store"
    _, output = fetch(client, "/img/steps.gif?w=40&fm=gif&frame=2")  # one still frame is within budget
    assert output.format == "GIF" and getattr(output, "n_frames", 1) == 1


def test_strict_animation_within_budget_is_served(make_client: MakeClient, anim_root: Path) -> None:
    client = make_client(source={"local_root": anim_root}, limits={"max_frames": 6, "strict_animation": True})
    _, output = fetch(client, "/img/steps.gif?w=40&fm=webp")
    assert output.n_frames == FRAMES  # type: ignore[attr-defined]


# --- frame=N ---


@pytest.mark.parametrize("source", ["steps.gif", "steps.webp"])
@pytest.mark.parametrize("index", [0, 2, 5])
def test_frame_takes_one_still_frame(anim: TestClient, source: str, index: int) -> None:
    _, png = fetch(anim, f"/img/{source}?w=40&fm=png&frame={index}")
    assert png.format == "PNG" and png.size == (40, 30) and getattr(png, "n_frames", 1) == 1
    assert close(centre_colour(np.asarray(png.convert("RGBA"))), COLOURS[index], 2)
    _, gif = fetch(anim, f"/img/{source}?w=40&fm=gif&frame={index}")  # an animated format: still one frame
    assert getattr(gif, "n_frames", 1) == 1
    assert close(centre_colour(np.asarray(gif.convert("RGBA"))), COLOURS[index], 2)


@pytest.mark.parametrize(("source", "index"), [("steps.gif", 6), ("steps.webp", 99), ("still.png", 1)])
def test_frame_beyond_the_last_is_a_400(anim: TestClient, source: str, index: int) -> None:
    body = assert_problem(anim.get(f"/img/{source}?frame={index}"), 400, "frame")
    assert "frames" in body["detail"]


def test_frame_zero_of_a_still_image(anim: TestClient) -> None:
    _, output = fetch(anim, "/img/still.png?frame=0&fm=png")
    assert output.getpixel((0, 0)) == (10, 20, 30)


def test_frame_is_part_of_the_cache_key(anim: TestClient) -> None:
    etags = {anim.get(f"/img/steps.gif?w=40&fm=png&frame={i}").headers["etag"] for i in range(3)}
    assert len(etags) == 3
