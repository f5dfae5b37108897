"""Hostile images (built by tests/hostile.py) served from a local root through the real app.

Each case gets a clear 4xx (problem+json, `no-store`, never cached: asked twice, never a HIT) or a 200
whose body decodes to the expected format and size; never a 500, never a crash. Wall time and peak RSS
(VmHWM, reset before each case) are measured for every case and bounded.

Pillow's warnings are left as in production while a case renders (recorded, not raised), so a case sees
what a server would; the pytest default (warnings are errors) would turn them into 415s and hide bugs.
The decompression and frame bombs run in a child process under an address-space and CPU limit.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.settings import Settings
from tests.hostile import (
    IN_PROCESS,
    ISOLATED,
    Hostile,
    gif,
    gif_frame,
    ico,
    peak_rss_kib,
    report,
    reset_peak_rss,
    run_isolated,
    zeros_png,
)

PROBLEM = "application/problem+json"
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "AVIF": "image/avif", "GIF": "image/gif"}
WALL_BOUND = 5.0  # seconds per request, on a 2-core machine (the slowest case takes ~0.4 s)
REFUSAL_RSS_MIB = 64.0  # a 413 is decided from the header: it may not cost a decode
RENDER_RSS_MIB = 512.0  # a render within the 50 M pixel budget (4 bytes a pixel, one conversion)
MEASURED: list[dict[str, Any]] = []


def marked(cases: list[Hostile]) -> list[Any]:
    return [
        pytest.param(
            case, id=case.name, marks=[pytest.mark.xfail(strict=True, reason=f"BUG: {case.bug}")] * bool(case.bug)
        )
        for case in cases
    ]


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    for case in IN_PROCESS:
        (root / case.name).write_bytes(case.data())
    return root


@pytest.fixture(scope="module")
def hostile(hostile_root: Path) -> Iterator[TestClient]:
    settings = Settings(
        _env_file=None, source={"local_root": hostile_root}, limits={"workers": 2}, log={"level": "error"}
    )
    with TestClient(create_app(settings)) as client:
        yield client
    if MEASURED:
        slowest = max(MEASURED, key=lambda m: m["wall_s"])
        hungriest = max(MEASURED, key=lambda m: m["rss_mib"])
        report(
            "hostile-images",
            cases=len(MEASURED),
            max_wall_s=slowest["wall_s"],
            slowest=slowest["case"],
            max_peak_rss_delta_mib=hungriest["rss_mib"],
            hungriest=hungriest["case"],
            statuses={str(s): sum(m["status"] == s for m in MEASURED) for s in sorted({m["status"] for m in MEASURED})},
            max_rss_mib_by_status={
                str(s): round(max(m["rss_mib"] for m in MEASURED if m["status"] == s), 1)
                for s in sorted({m["status"] for m in MEASURED})
            },
            max_wall_s_by_status={
                str(s): max(m["wall_s"] for m in MEASURED if m["status"] == s)
                for s in sorted({m["status"] for m in MEASURED})
            },
        )


def measured_get(client: TestClient, target: str) -> tuple[httpx.Response, float, float, list[str]]:
    """GET `target`; return the response, wall seconds, peak RSS growth (MiB) and Pillow's warnings."""
    # Warnings recorded rather than raised, as on a server (the filter is global: render threads too).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reset_peak_rss()
        before = peak_rss_kib()
        started = time.perf_counter()
        response = client.get(target)
        wall = time.perf_counter() - started
        grown = (peak_rss_kib() - before) / 1024
    return response, wall, grown, [str(w.message) for w in caught]


def check_image(response: httpx.Response, case: Hostile) -> Image.Image:
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format is not None
    assert response.headers["content-type"] == MEDIA_TYPES[image.format]
    if case.size is not None:
        assert image.size == case.size
    if case.fmt is not None:
        assert image.format == case.fmt
    return image


def check_problem(response: httpx.Response) -> None:
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["cache-control"] == "no-store"
    assert response.headers.get("x-cache") != "HIT"
    body = response.json()
    assert body["status"] == response.status_code
    assert body["type"].startswith("urn:imgproxy:problem:")


@pytest.mark.parametrize("case", marked(IN_PROCESS))
def test_hostile_image(hostile: TestClient, case: Hostile) -> None:
    service = hostile.app.state.service  # type: ignore[attr-defined]
    target = f"/img/{case.name}?{case.query}"
    held = len(service.cache)
    first, wall, grown, _ = measured_get(hostile, target)
    MEASURED.append({"case": case.name, "status": first.status_code, "wall_s": round(wall, 3), "rss_mib": grown})
    assert first.status_code != 500, first.text
    assert first.status_code in case.expect, first.text
    assert wall < WALL_BOUND
    second, _, _, _ = measured_get(hostile, target)
    assert second.status_code == first.status_code
    if first.status_code == 200:
        check_image(first, case)
        assert first.content == second.content
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert grown < RENDER_RSS_MIB
    else:
        check_problem(first)
        check_problem(second)
        assert len(service.cache) == held  # a failure is never stored
        if first.status_code == 413:
            assert grown < REFUSAL_RSS_MIB


def test_case_names_are_unique_and_there_are_over_a_hundred() -> None:
    names = [case.name for case in [*IN_PROCESS, *ISOLATED]]
    assert len(names) == len(set(names))
    assert len(names) >= 100


# --- bombs and bypasses, each in a child process under limits ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", marked(ISOLATED))
def test_isolated_bomb(case: Hostile) -> None:
    """Production-like (warnings not errors), address space capped at 3 GiB, killed after 60 s."""
    result = run_isolated(case.name)
    report("hostile-isolated", **result)
    assert not result.get("crashed"), result
    status = result["status"]
    assert status in case.expect, result
    assert result["second_status"] == status
    assert float(result["wall_s"]) < 10.0  # type: ignore[arg-type]
    grown = float(result["peak_rss_delta_mib"])  # type: ignore[arg-type]
    if status == 200:
        assert (result.get("format"), result.get("size")) != (None, None)
        if case.size is not None:
            assert result["size"] == list(case.size)
        assert result["x_cache"] == ["MISS", "HIT"]
        assert grown < RENDER_RSS_MIB, result
    else:
        assert result["content_type"] == PROBLEM
        assert result["x_cache"] == [None, None]
        assert result["cached_entries"] == 0
        if status == 413:
            assert grown < REFUSAL_RSS_MIB, result


# --- the budget bypasses, small and deterministic ---------------------------------------------------------


@pytest.fixture
def budget_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(files: dict[str, bytes], **limits: object) -> TestClient:
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
        settings = Settings(_env_file=None, source={"local_root": tmp_path}, limits={"workers": 1, **limits})
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def grown_frame_gif() -> bytes:
    """A 16x16 screen whose second frame is 200x200: 40,000 pixels the first frame's size does not show."""
    return gif((16, 16), [gif_frame((16, 16), 1), gif_frame((200, 200), 2)])


def test_a_grown_later_frame_counts_against_the_pixel_budget(budget_client: Callable[..., TestClient]) -> None:
    client = budget_client({"grown.gif": grown_frame_gif()}, max_source_pixels=10_000, strict_animation=True)
    response, _, _, _ = measured_get(client, "/img/grown.gif?fm=gif")
    assert response.status_code == 413


def test_a_grown_later_frame_gives_the_first_frame_only(budget_client: Callable[..., TestClient]) -> None:
    client = budget_client({"grown.gif": grown_frame_gif()}, max_source_pixels=10_000)
    response, _, _, _ = measured_get(client, "/img/grown.gif?fm=gif")
    assert response.status_code == 200
    assert getattr(Image.open(io.BytesIO(response.content)), "n_frames", 1) == 1


def test_seeking_to_a_frame_counts_the_frames_before_it(budget_client: Callable[..., TestClient]) -> None:
    frames = [gif_frame((1, 1), i % 3 + 1) for i in range(10)]
    client = budget_client({"seek.gif": gif((100, 100), frames)}, max_source_pixels=10_000)
    assert measured_get(client, "/img/seek.gif?frame=0")[0].status_code == 200  # one 100x100 canvas: in budget
    response, _, _, _ = measured_get(client, "/img/seek.gif?frame=9")  # ten of them: 100,000 pixels
    assert response.status_code == 413


def test_an_icon_is_refused_before_its_inner_image_is_decoded(budget_client: Callable[..., TestClient]) -> None:
    icon = ico([(16, 16, zeros_png(4000, 4000, colour=6))])  # 64 MB of RGBA behind a 16x16 directory entry
    client = budget_client({"big.ico": icon}, max_source_pixels=1_000_000)
    response, _, grown, _ = measured_get(client, "/img/big.ico?w=8")
    assert response.status_code == 413
    assert grown < 16.0  # MiB: refused from the headers, not after decoding 64 MB
