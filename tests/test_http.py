"""HTTP behaviour through the real app: negotiation, validators, HEAD, caching, coalescing, overload,
source versions, path safety, problem documents, passthrough and the OpenAPI document."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from starlette.testclient import TestClient

import imgproxy.service
from imgproxy.app import create_app
from imgproxy.settings import Settings
from tests.conftest import decode

DEFAULT_CACHE_CONTROL = "public, max-age=86400, stale-while-revalidate=604800"
CHROME_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
SAFARI_ACCEPT = "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"
PROBLEM_FIELDS = ("type", "title", "status", "detail")
# Text that must never reach a client: filesystem locations and library or interpreter messages.
LEAK_MARKERS = ("/tmp", "/work", "/etc", "site-packages", "Traceback", "Errno", "PIL", "OSError", "Exception")
IMAGE_MEDIA_TYPES = {"image/jpeg", "image/png", "image/webp", "image/avif", "image/gif"}


# --- helpers ------------------------------------------------------------------------------------------------


def assert_problem(response: httpx.Response | Any, status: int) -> dict[str, Any]:
    """An RFC 9457 document with the status, never cached, never sniffed, and leaking nothing."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "etag" not in response.headers
    body: dict[str, Any] = response.json()
    for name in PROBLEM_FIELDS:
        assert name in body, f"problem document lacks {name}: {body}"
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    for marker in LEAK_MARKERS:
        assert marker not in response.text, f"{marker!r} leaked into {response.text}"
    return body


def assert_image_response(response: httpx.Response | Any, media_type: str) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert int(response.headers["content-length"]) == len(response.content)
    assert "transfer-encoding" not in response.headers
    image = decode(response.content)
    assert Image.MIME[image.format] == media_type
    return image


def server_timing(header: str) -> dict[str, float]:
    """`name;dur=1.2, other;dur=3` → {name: 1.2, other: 3.0}."""
    entries: dict[str, float] = {}
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        key, _, value = params.partition("=")
        assert key.strip() == "dur", header
        entries[name.strip()] = float(value)
    return entries


def vary(response: httpx.Response | Any) -> set[str]:
    """The request headers a response says it varies on, lower-case."""
    return {token.strip().lower() for token in response.headers.get("vary", "").split(",") if token.strip()}


def openapi_document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def assert_documented_outputs(operation: dict[str, Any], image_types: set[str]) -> None:
    """The 200 response names exactly the image types the server can produce (`image_types`, plus HEIC when
    `fm` offers it), never JSON, and text only for a text format that `fm` offers (BlurHash)."""
    content = set(operation["responses"]["200"]["content"])
    fm = next(p for p in operation["parameters"] if p["name"] == "fm")["schema"]["enum"]
    images = {media_type for media_type in content if media_type.startswith("image/")}
    assert images == image_types | ({"image/heic"} if "heic" in fm else set())
    assert not any("json" in media_type for media_type in content)
    others = content - images
    assert all(media_type.startswith("text/plain") for media_type in others)
    assert not others or "blurhash" in fm


def image_operation(document: dict[str, Any], method: str = "get") -> dict[str, Any]:
    operation: dict[str, Any] = document["paths"]["/img/{path}"][method]
    return operation


def slow_render(monkeypatch: pytest.MonkeyPatch, delay: float, release: threading.Event | None = None) -> list[float]:
    """Wrap the pipeline so each call sleeps `delay` s in its render thread (or until `release` is set);
    returns the list the wrapper appends each call's start time to."""
    real = imgproxy.service.render
    calls: list[float] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        if release is None:
            time.sleep(delay)
        else:
            release.wait(delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(imgproxy.service, "render", wrapper)
    return calls


@pytest.fixture(scope="module")
def shared_clients(source_root: Path) -> Iterator[dict[bool, TestClient]]:
    """One app without and one with passthrough, shared by this module's read-only tests (cheaper than an app
    per parametrised case); tests that count cache hits or patch the pipeline build their own."""
    clients: dict[bool, TestClient] = {}
    try:
        for passthrough in (False, True):
            settings = Settings(_env_file=None, source={"local_root": source_root}, http={"passthrough": passthrough})
            clients[passthrough] = TestClient(create_app(settings))
            clients[passthrough].__enter__()  # runs the lifespan
        yield clients
    finally:
        for client in clients.values():
            client.__exit__(None, None, None)


@pytest.fixture
def warm(shared_clients: dict[bool, TestClient]) -> TestClient:
    return shared_clients[False]


@pytest.fixture
def make_app(make_settings: Callable[..., Settings]) -> Callable[..., FastAPI]:
    def build(**groups: Any) -> FastAPI:
        return create_app(make_settings(**groups))

    return build


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An async client over the app, with its lifespan run around it (so the render pool is shut down)."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client,
    ):
        yield client


async def raw_asgi(
    app: FastAPI, path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send one request with `path` exactly as given (no dot-segment normalisation, no percent-decoding),
    as a server hands over a request line like `GET /img/../x HTTP/1.1`."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    done = asyncio.Event()
    request_sent = False
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    start = next(m for m in messages if m["type"] == "http.response.start")
    response_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], response_headers, body


def save_image(path: Path, image: Image.Image, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt)
    return path


# --- Accept negotiation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (CHROME_ACCEPT, "image/avif"),
        ("image/avif", "image/avif"),
        ("image/webp,*/*", "image/webp"),
        (SAFARI_ACCEPT, "image/webp"),
        ("image/avif;q=0,image/webp", "image/webp"),
        ("image/webp;q=0.5, image/avif;q=0", "image/webp"),
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("image/jpeg", "image/jpeg"),
        ("image/avif;q=0", "image/jpeg"),
        ("image/avif;q=0, image/webp;q=0.0", "image/jpeg"),
        ("text/html,application/xhtml+xml", "image/jpeg"),
    ],
)
def test_accept_picks_the_output_format(warm: TestClient, accept: str, media_type: str) -> None:
    response = warm.get("/img/chelsea.png?w=60", headers={"Accept": accept})
    image = assert_image_response(response, media_type)
    assert image.size == (60, 40)  # 451x300 → 60 wide, 39.9 rounded
    assert "accept" in vary(response)


def test_missing_accept_header_gives_jpeg(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    del client.headers["accept"]  # httpx sends `Accept: */*` by default
    response = client.get("/img/chelsea.png?w=60")
    assert_image_response(response, "image/jpeg")
    assert "accept" in vary(response)


def test_legacy_accept_keeps_alpha_as_png(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    image = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (0, 0, 20, 30))  # left half fully transparent
    save_image(tmp_path / "alpha.png", image)
    Image.new("RGB", (40, 30), (0, 128, 0)).save(tmp_path / "opaque.png")
    client = make_client(source={"local_root": tmp_path})
    for accept in ("*/*", "image/*", "image/jpeg"):
        out = assert_image_response(client.get("/img/alpha.png?w=20", headers={"Accept": accept}), "image/png")
        assert out.mode == "RGBA"
        assert out.size == (20, 15)
        assert out.getpixel((2, 7))[3] == 0  # the transparent half is still transparent
        assert out.getpixel((17, 7))[3] == 255
        assert_image_response(client.get("/img/opaque.png?w=20", headers={"Accept": accept}), "image/jpeg")


def test_avif_disabled_negotiates_webp(make_client: Callable[..., TestClient]) -> None:
    client = make_client(formats={"avif": False})
    assert_image_response(client.get("/img/chelsea.png?w=60", headers={"Accept": CHROME_ACCEPT}), "image/webp")
    assert_image_response(client.get("/img/chelsea.png?w=60", headers={"Accept": "image/avif"}), "image/jpeg")
    body = assert_problem(client.get("/img/chelsea.png?w=60&fm=avif"), 400)
    assert body["param"] == "fm"


def test_vary_only_on_negotiated_responses(client: TestClient) -> None:
    negotiated = client.get("/img/chelsea.png?w=60", headers={"Accept": "image/webp"})
    auto = client.get("/img/chelsea.png?w=60&fm=auto", headers={"Accept": "image/webp"})
    assert "accept" in vary(negotiated)
    assert "accept" in vary(auto)
    for fm, media_type in (("jpeg", "image/jpeg"), ("jpg", "image/jpeg"), ("webp", "image/webp"), ("png", "image/png")):
        explicit = client.get(f"/img/chelsea.png?w=60&fm={fm}", headers={"Accept": "image/avif"})
        assert_image_response(explicit, media_type)
        assert "accept" not in vary(explicit)


@pytest.mark.parametrize(
    "same_bucket",
    [
        (CHROME_ACCEPT, "image/avif", "image/avif;q=0.1,image/webp"),
        (SAFARI_ACCEPT, "image/webp", "image/webp,*/*", "image/avif;q=0,image/webp"),
        ("*/*", "image/*", "image/jpeg", "text/html", "image/png,image/avif;q=0"),
    ],
)
def test_accepts_in_one_bucket_share_an_etag(warm: TestClient, same_bucket: tuple[str, ...]) -> None:
    etags = {warm.get("/img/chelsea.png?w=61", headers={"Accept": a}).headers["etag"] for a in same_bucket}
    assert len(etags) == 1


def test_buckets_have_distinct_etags(client: TestClient) -> None:
    etags = [
        client.get("/img/chelsea.png?w=62", headers={"Accept": accept}).headers["etag"]
        for accept in ("image/avif", "image/webp", "image/jpeg")
    ]
    assert len(set(etags)) == 3


def test_etag_is_stable_across_aliases_and_instances(make_client: Callable[..., TestClient]) -> None:
    first, second = make_client(), make_client()
    a = first.get("/img/chelsea.png?w=63&fm=jpg").headers["etag"]
    b = second.get("/img/chelsea.png?width=63&format=jpeg").headers["etag"]
    assert a == b
    assert a.startswith('"') and a.endswith('"')


# --- ETag / If-None-Match -----------------------------------------------------------------------------------


def test_if_none_match_answers_304_with_validators_and_no_body(client: TestClient) -> None:
    url = "/img/chelsea.png?w=64"
    first = client.get(url, headers={"Accept": "image/webp"})
    etag = first.headers["etag"]
    response = client.get(url, headers={"Accept": "image/webp", "If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["cache-control"] == DEFAULT_CACHE_CONTROL
    assert "accept" in vary(response)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "x-cache" not in response.headers


@pytest.mark.parametrize(
    "header", ["{etag}", "W/{etag}", '"nope", {etag}', '"a", W/"b",W/{etag} , "c"', "*", " {etag} "]
)
def test_if_none_match_forms(warm: TestClient, header: str) -> None:
    url = "/img/chelsea.png?w=65&fm=png"
    etag = warm.get(url).headers["etag"]
    response = warm.get(url, headers={"If-None-Match": header.format(etag=etag)})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert "accept" not in vary(response)  # explicit fm


@pytest.mark.parametrize("header", ['"nope"', '"a", "b"', 'W/"nope"', "{unquoted}", ""])
def test_if_none_match_without_a_match_is_200(warm: TestClient, header: str) -> None:
    url = "/img/chelsea.png?w=66&fm=png"
    etag = warm.get(url).headers["etag"]
    response = warm.get(url, headers={"If-None-Match": header.format(unquoted=etag.strip('"'))})
    assert_image_response(response, "image/png")
    assert response.headers["etag"] == etag


def test_if_none_match_for_another_bucket_is_200(client: TestClient) -> None:
    url = "/img/chelsea.png?w=67"
    webp_etag = client.get(url, headers={"Accept": "image/webp"}).headers["etag"]
    response = client.get(url, headers={"Accept": "image/avif", "If-None-Match": webp_etag})
    assert_image_response(response, "image/avif")


def test_304_decodes_nothing(make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    url = "/img/coffee.png?w=70&fm=webp"
    etag = make_client().get(url).headers["etag"]  # learnt from another instance: the ETag is deterministic

    def no_render(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a conditional request that matches must not render")

    monkeypatch.setattr(imgproxy.service, "render", no_render)
    fresh = make_client()
    cache = fresh.app.state.service.cache  # type: ignore[attr-defined]
    for header in (etag, "*"):
        response = fresh.get(url, headers={"If-None-Match": header})
        assert response.status_code == 304
        assert response.headers["etag"] == etag
    # never-rendered URL answered from the key alone: the result cache was not even consulted
    response = fresh.get("/img/astronaut.png?w=71", headers={"If-None-Match": "*"})
    assert response.status_code == 304
    assert (cache.hits, cache.misses) == (0, 0)


# --- HEAD ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["w=72&fm=png", "w=73"])
def test_head_has_the_headers_of_get_and_no_body(client: TestClient, query: str) -> None:
    url = f"/img/chelsea.png?{query}"
    head = client.head(url, headers={"Accept": "image/webp"})  # cold: HEAD renders
    get = client.get(url, headers={"Accept": "image/webp"})
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(get.content) > 0
    for name in ("content-type", "etag", "cache-control", "x-content-type-options"):
        assert head.headers[name] == get.headers[name]
    assert head.headers.get("vary") == get.headers.get("vary")
    warm = client.head(url, headers={"Accept": "image/webp"})
    assert warm.headers["x-cache"] == "HIT"
    assert warm.headers["content-length"] == head.headers["content-length"]
    assert warm.content == b""


def test_head_is_allowed_on_img_and_healthz(client: TestClient) -> None:
    assert client.head("/img/chelsea.png?w=30").status_code == 200
    response = client.head("/healthz")
    assert response.status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs",
        "/metrics",
    ],
)
def test_head_is_allowed_wherever_get_is(warm: TestClient, path: str) -> None:
    get = warm.get(path)
    head = warm.head(path)
    assert get.status_code == 200
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_head_of_an_error_keeps_its_status(client: TestClient) -> None:
    assert client.head("/img/missing.png?w=10").status_code == 404
    assert client.head("/img/chelsea.png?bogus=1").status_code == 400


# --- Cache-Control and nosniff ------------------------------------------------------------------------------


def test_cache_control_default_and_configured(make_client: Callable[..., TestClient]) -> None:
    assert make_client().get("/img/chelsea.png?w=40").headers["cache-control"] == DEFAULT_CACHE_CONTROL
    custom = make_client(http={"cache_control": "private, max-age=60"})
    response = custom.get("/img/chelsea.png?w=40")
    assert response.headers["cache-control"] == "private, max-age=60"
    not_modified = custom.get("/img/chelsea.png?w=40", headers={"If-None-Match": response.headers["etag"]})
    assert not_modified.status_code == 304
    assert not_modified.headers["cache-control"] == "private, max-age=60"
    assert custom.get("/img/nope.png").headers["cache-control"] == "no-store"


def test_nosniff_on_every_response(client: TestClient) -> None:
    ok = client.get("/img/chelsea.png?w=41")
    cases = [
        (200, ok),
        (304, client.get("/img/chelsea.png?w=41", headers={"If-None-Match": ok.headers["etag"]})),
        (400, client.get("/img/chelsea.png?nope=1")),
        (404, client.get("/img/nope.png")),
        (405, client.post("/img/chelsea.png")),
        (415, client.get("/img/not_an_image.jpg?w=10")),
        (404, client.get("/no/such/route")),
        (200, client.get("/healthz")),
        (200, client.head("/img/chelsea.png?w=41")),
    ]
    for status, response in cases:
        assert response.status_code == status
        assert response.headers["x-content-type-options"] == "nosniff", response.request.url


def test_nosniff_on_an_unexpected_500(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unexpected failure in /some/internal/path")

    monkeypatch.setattr(imgproxy.service, "render", broken)
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as client:
        response = client.get("/img/chelsea.png?w=42")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "/some/internal/path" not in response.text
    assert response.headers.get("x-content-type-options") == "nosniff"


# --- X-Cache, Server-Timing, Content-Length -----------------------------------------------------------------


def test_miss_then_hit_with_server_timing_and_exact_length(client: TestClient) -> None:
    url = "/img/coffee.png?w=100&fm=webp"
    miss = client.get(url)
    hit = client.get(url)
    assert miss.headers["x-cache"] == "MISS"
    assert hit.headers["x-cache"] == "HIT"
    assert miss.content == hit.content
    assert miss.headers["etag"] == hit.headers["etag"]
    for response in (miss, hit):
        image = assert_image_response(response, "image/webp")
        assert image.size == (100, 67)  # 600x400 → 66.7 rounded half-up
    timings = server_timing(miss.headers["server-timing"])
    assert {"decode", "transform", "encode"} <= set(timings)
    assert all(value >= 0 for value in timings.values())
    assert "server-timing" not in hit.headers


# --- result cache eviction by bytes -------------------------------------------------------------------------


def test_cache_evicts_least_recent_by_bytes(make_client: Callable[..., TestClient]) -> None:
    budget = 12_000
    client = make_client(cache={"max_bytes": budget})
    cache = client.app.state.service.cache  # type: ignore[attr-defined]
    urls = [f"/img/chelsea.png?fm=jpeg&w={w}" for w in range(100, 200, 10)]
    sizes = []
    for url in urls:
        response = client.get(url)
        assert response.headers["x-cache"] == "MISS"
        sizes.append(len(response.content))
        assert 0 < cache.bytes_held <= budget
    assert all(size <= budget for size in sizes)
    assert sum(sizes) > budget  # so something must have gone
    assert client.get(urls[-1]).headers["x-cache"] == "HIT"  # the most recent stays
    assert client.get(urls[0]).headers["x-cache"] == "MISS"  # the least recent was evicted
    assert cache.bytes_held <= budget


def test_entry_larger_than_the_budget_is_served_not_stored(make_client: Callable[..., TestClient]) -> None:
    budget = 5_000
    client = make_client(cache={"max_bytes": budget})
    cache = client.app.state.service.cache  # type: ignore[attr-defined]
    small = client.get("/img/chelsea.png?fm=jpeg&w=40")
    assert len(small.content) <= budget
    held = cache.bytes_held
    assert held == len(small.content)
    url = "/img/chelsea.png?fm=png&w=200"
    for _ in range(2):
        big = client.get(url)
        assert_image_response(big, "image/png")
        assert len(big.content) > budget
        assert big.headers["x-cache"] == "MISS"
        assert cache.bytes_held == held  # neither stored nor evicting what fits
    assert client.get("/img/chelsea.png?fm=jpeg&w=40").headers["x-cache"] == "HIT"


def test_zero_budget_disables_the_cache(make_client: Callable[..., TestClient]) -> None:
    client = make_client(cache={"max_bytes": 0})
    cache = client.app.state.service.cache  # type: ignore[attr-defined]
    responses = [client.get("/img/chelsea.png?w=30&fm=png") for _ in range(3)]
    assert [r.headers["x-cache"] for r in responses] == ["MISS"] * 3
    assert len({r.content for r in responses}) == 1  # the same bytes each time (deterministic encoder)
    assert len({r.headers["etag"] for r in responses}) == 1
    assert cache.bytes_held == 0
    assert len(cache) == 0


# --- coalescing ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_identical_concurrent_misses_render_once(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = slow_render(monkeypatch, 0.2)  # long enough that the whole burst arrives while it runs
    app = make_app()
    async with serving(app) as client:
        url = "/img/astronaut.png?w=90&fm=webp"
        responses = await asyncio.gather(*(client.get(url) for _ in range(20)))
        assert [r.status_code for r in responses] == [200] * 20
        assert len({r.content for r in responses}) == 1
        assert len({r.headers["etag"] for r in responses}) == 1
        assert decode(responses[0].content).size == (90, 90)
        assert len(calls) == 1
        assert app.state.service.renders.coalesced == 19
        assert Counter(r.headers["x-cache"] for r in responses) == {"MISS": 20}
        assert (await client.get(url)).headers["x-cache"] == "HIT"
        assert len(calls) == 1


# --- overload and deadlines ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_full_queue_answers_503_at_once(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = slow_render(monkeypatch, 0.5)
    app = make_app(limits={"workers": 1, "max_queue": 0})
    async with serving(app) as client:
        started = time.monotonic()
        responses = await asyncio.gather(*(client.get(f"/img/chelsea.png?w={w}") for w in range(20, 26)))
        statuses = Counter(r.status_code for r in responses)
        # one worker and no queue: exactly one render runs, every other distinct request is refused
        assert statuses == {200: 1, 503: 5}
        assert len(calls) == 1
        for response in responses:
            if response.status_code == 503:
                body = assert_problem(response, 503)
                assert int(response.headers["retry-after"]) > 0
                assert "overload" in body["type"]
            else:
                assert decode(response.content).width in range(20, 26)
        assert time.monotonic() - started < 5
        # the slot is free again afterwards
        assert (await client.get("/img/chelsea.png?w=27")).status_code == 200


@pytest.mark.anyio
async def test_coalesced_requests_take_no_queue_slot(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = slow_render(monkeypatch, 0.3)
    app = make_app(limits={"workers": 1, "max_queue": 0})
    async with serving(app) as client:
        responses = await asyncio.gather(*(client.get("/img/coffee.png?w=33") for _ in range(10)))
        assert [r.status_code for r in responses] == [200] * 10
        assert len({r.content for r in responses}) == 1
        assert len(calls) == 1


def test_render_deadline_answers_503_and_is_not_cached(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = imgproxy.service.render
    release = threading.Event()
    calls = slow_render(monkeypatch, 1.0, release)
    client = make_client(limits={"render_timeout": 0.2, "workers": 2})
    url = "/img/chelsea.png?w=44"
    started = time.monotonic()
    response = client.get(url)
    elapsed = time.monotonic() - started
    body = assert_problem(response, 503)
    assert "timeout" in body["type"] or "time" in body["title"].lower()
    assert int(response.headers["retry-after"]) > 0
    assert elapsed < 0.9  # answered at the deadline, not when the render ended
    assert len(calls) == 1
    monkeypatch.setattr(imgproxy.service, "render", real)
    release.set()  # let the abandoned render thread finish
    again = client.get(url)
    assert_image_response(again, "image/jpeg")
    assert again.headers["x-cache"] == "MISS"
    assert decode(again.content).width == 44


# --- source versions ----------------------------------------------------------------------------------------


def test_changed_source_changes_etag_and_misses(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    source = save_image(tmp_path / "pic.png", Image.new("RGB", (80, 40), (0, 0, 200)))
    client = make_client(source={"local_root": tmp_path})
    url = "/img/pic.png?w=40&fm=png"
    first = client.get(url)
    assert first.headers["x-cache"] == "MISS"
    assert client.get(url).headers["x-cache"] == "HIT"
    info = source.stat()
    os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns + 5_000_000_000))  # touched: same bytes, new mtime
    touched = client.get(url)
    assert touched.headers["etag"] != first.headers["etag"]
    assert touched.headers["x-cache"] == "MISS"
    old = client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert old.status_code == 200  # the previous version's validator no longer matches
    save_image(source, Image.new("RGB", (120, 30), (200, 0, 0)))  # rewritten with other pixels
    rewritten = client.get(url)
    assert rewritten.headers["etag"] not in (first.headers["etag"], touched.headers["etag"])
    assert rewritten.headers["x-cache"] == "MISS"
    image = decode(rewritten.content)
    assert image.size == (40, 10)
    assert image.getpixel((20, 5))[:3] == (200, 0, 0)


# --- path safety --------------------------------------------------------------------------------------------


ENCODED_ESCAPES = [
    "/img/%2e%2e/%2e%2e/etc/passwd",
    "/img/%2E%2E/chelsea.png",
    "/img/..%2f..%2fetc%2fpasswd",
    "/img/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/img//etc/passwd",
    "/img/%2fetc%2fpasswd",
    "/img/sub/%2e%2e/chelsea.png",
    "/img/sub/%2e%2e/%2e%2e/root/chelsea.png",
    "/img/%2e/chelsea.png",
    "/img/..%5c..%5cetc%5cpasswd",
    "/img/%5cetc%5cpasswd",
    "/img/sub%5c..%5cchelsea.png",
    "/img/chelsea.png%00",
    "/img/chelsea.png%00.jpg",
    "/img/%00",
    "/img/sub",
    "/img/sub/",
    "/img/",
]

RAW_ESCAPES = [
    "/img/../x",
    "/img/../chelsea.png",
    "/img/../../../../../../etc/passwd",
    "/img/sub/../chelsea.png",
    "/img/./chelsea.png",
    "/img//etc/passwd",
    "/img/..\\..\\etc\\passwd",
    "/img/sub\\..\\chelsea.png",
    "/img/\\etc\\passwd",
    "/img/chelsea.png\x00.jpg",
]


@pytest.mark.parametrize("passthrough", [False, True])
@pytest.mark.parametrize("path", ENCODED_ESCAPES)
def test_escaping_paths_are_not_found(shared_clients: dict[bool, TestClient], path: str, passthrough: bool) -> None:
    client = shared_clients[passthrough]
    for url in (path, path + "?w=10"):
        response = client.get(url)
        assert_problem(response, 404)
        assert b"root:" not in response.content


@pytest.mark.parametrize("passthrough", [False, True])
@pytest.mark.parametrize("path", RAW_ESCAPES)
def test_raw_escaping_paths_are_not_found(shared_clients: dict[bool, TestClient], path: str, passthrough: bool) -> None:
    client = shared_clients[passthrough]
    assert client.portal is not None  # the app's own event loop, where its lifespan ran
    status, headers, body = client.portal.call(raw_asgi, client.app, path)
    assert status == 404
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-content-type-options"] == "nosniff"
    assert b"root:" not in body


@pytest.mark.anyio
async def test_raw_helper_reaches_real_files(app: FastAPI) -> None:
    """The control for the raw-path tests: the same helper does get images for honest paths."""
    async with app.router.lifespan_context(app):
        status, headers, body = await raw_asgi(app, "/img/sub/nested.png")
    assert status == 200
    assert headers["content-type"] == "image/jpeg"  # no Accept header: legacy bucket, no alpha
    assert decode(body).size == (20, 10)


@pytest.mark.parametrize("passthrough", [False, True])
def test_symlinks_out_of_the_root_are_not_found(
    make_client: Callable[..., TestClient], tmp_path: Path, passthrough: bool
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    save_image(outside / "secret.png", Image.new("RGB", (30, 20), (9, 9, 9)))
    save_image(root / "real.png", Image.new("RGB", (30, 20), (0, 200, 0)))
    (root / "out.png").symlink_to(outside / "secret.png")
    (root / "outdir").symlink_to(outside, target_is_directory=True)
    (root / "in.png").symlink_to(root / "real.png")
    (root / "indir").symlink_to(root, target_is_directory=True)
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "folder").mkdir()
    client = make_client(source={"local_root": root}, http={"passthrough": passthrough})
    for path in ("out.png", "outdir/secret.png", "dangling.png", "folder", "indir", "nowhere.png"):
        for query in ("", "?w=10"):
            assert_problem(client.get(f"/img/{path}{query}"), 404)
    for path in ("in.png", "indir/real.png", "real.png"):
        response = client.get(f"/img/{path}?w=15")
        assert decode(response.content).size == (15, 10)
        assert response.headers["content-type"] == "image/jpeg"
    if passthrough:
        linked = client.get("/img/in.png")
        assert linked.status_code == 200
        assert linked.content == (root / "real.png").read_bytes()


# --- problem documents --------------------------------------------------------------------------------------


def test_unknown_parameter_is_named(client: TestClient) -> None:
    body = assert_problem(client.get("/img/chelsea.png?w=10&frobnicate=1"), 400)
    assert body["param"] == "frobnicate"
    assert "frobnicate" in body["detail"]


@pytest.mark.parametrize(
    "query", ["w=10&width=20", "width=10&w=20", "w=10&w=10", "fm=png&format=jpeg", "q=5&quality=5"]
)
def test_repeated_parameter_also_through_alias(warm: TestClient, query: str) -> None:
    body = assert_problem(warm.get(f"/img/chelsea.png?{query}"), 400)
    first, second = (item.split("=")[0] for item in query.split("&"))
    assert body["param"] in (first, second)
    assert body["param"] in body["detail"]


@pytest.mark.parametrize(
    ("query", "param"),
    [("w=0", "w"), ("w=99999", "w"), ("h=abc", "h"), ("q=101", "q"), ("fit=squash", "fit"), ("w=", "w")],
)
def test_bad_values_are_400_naming_the_parameter(warm: TestClient, query: str, param: str) -> None:
    assert assert_problem(warm.get(f"/img/chelsea.png?{query}"), 400)["param"] == param


def test_missing_source_is_404(client: TestClient) -> None:
    body = assert_problem(client.get("/img/does-not-exist.png?w=10"), 404)
    assert body["type"].endswith("not-found")


def test_bad_parameter_wins_over_missing_source(client: TestClient) -> None:
    assert_problem(client.get("/img/does-not-exist.png?bogus=1"), 400)


@pytest.mark.parametrize("limits", [{"max_source_bytes": 1000}, {"max_source_pixels": 1000}])
def test_source_over_budget_is_413(make_client: Callable[..., TestClient], limits: dict[str, int]) -> None:
    client = make_client(limits=limits)
    body = assert_problem(client.get("/img/chelsea.png?w=10"), 413)  # 240 kB, 451x300 px
    assert body["type"].endswith("too-large")


def test_small_source_within_budgets_is_served(make_client: Callable[..., TestClient], source_root: Path) -> None:
    nested = source_root / "sub" / "nested.png"
    assert nested.stat().st_size < 1000
    client = make_client(limits={"max_source_bytes": 1000, "max_source_pixels": 1000})
    assert_image_response(client.get("/img/sub/nested.png?w=10&fm=png"), "image/png")  # 20x10 = 200 px


@pytest.mark.parametrize("name", ["truncated.jpg", "empty.png", "not_an_image.jpg"])
@pytest.mark.parametrize("query", ["w=10", "fm=png", "w=10&h=10&fit=cover"])
def test_undecodable_sources_are_415(warm: TestClient, name: str, query: str) -> None:
    body = assert_problem(warm.get(f"/img/{name}?{query}"), 415)
    assert body["type"].endswith("unsupported-image")
    again = warm.get(f"/img/{name}?{query}")
    assert_problem(again, 415)  # errors are never cached
    assert "x-cache" not in again.headers


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(warm: TestClient, method: str) -> None:
    response = warm.request(method, "/img/chelsea.png?w=10")
    assert_problem(response, 405)
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed == {"GET", "HEAD"}


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_405_on_documentation_routes_lists_allowed_methods(client: TestClient, path: str) -> None:
    response = client.post(path)
    assert_problem(response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "HEAD"}


def test_unknown_route_is_404(client: TestClient) -> None:
    assert_problem(client.get("/nothing/here"), 404)
    assert_problem(client.get("/image/chelsea.png"), 404)


# --- passthrough --------------------------------------------------------------------------------------------


@pytest.fixture
def passthrough(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(http={"passthrough": True})


def test_passthrough_serves_the_original_bytes(passthrough: TestClient, source_root: Path) -> None:
    original = (source_root / "chelsea.png").read_bytes()
    response = passthrough.get("/img/chelsea.png")
    assert response.status_code == 200
    assert response.content == original
    assert response.headers["content-type"] == "image/png"
    assert int(response.headers["content-length"]) == len(original)
    assert response.headers["etag"].strip('"')
    assert response.headers["last-modified"].endswith("GMT")
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["cache-control"] == DEFAULT_CACHE_CONTROL
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "vary" not in response.headers
    jpeg = passthrough.get("/img/landscape.jpg")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content == (source_root / "landscape.jpg").read_bytes()


def test_passthrough_sniffs_the_type(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    save_image(tmp_path / "disguised.jpg", Image.new("RGB", (8, 8)), "PNG")
    save_image(tmp_path / "photo.png", Image.new("RGB", (8, 8)), "JPEG")
    save_image(tmp_path / "noext", Image.new("RGB", (8, 8)), "WEBP")
    client = make_client(source={"local_root": tmp_path}, http={"passthrough": True})
    assert client.get("/img/disguised.jpg").headers["content-type"] == "image/png"
    assert client.get("/img/photo.png").headers["content-type"] == "image/jpeg"
    assert client.get("/img/noext").headers["content-type"] == "image/webp"


def test_passthrough_range(passthrough: TestClient, source_root: Path) -> None:
    original = (source_root / "chelsea.png").read_bytes()
    response = passthrough.get("/img/chelsea.png", headers={"Range": "bytes=0-99"})
    assert response.status_code == 206
    assert response.content == original[:100]
    assert response.headers["content-length"] == "100"
    assert response.headers["content-range"] == f"bytes 0-99/{len(original)}"
    tail = passthrough.get("/img/chelsea.png", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206
    assert tail.content == original[-10:]


def test_passthrough_head_and_304(passthrough: TestClient, source_root: Path) -> None:
    get = passthrough.get("/img/chelsea.png")
    head = passthrough.head("/img/chelsea.png")
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-length", "content-type", "etag", "last-modified"):
        assert head.headers[name] == get.headers[name]
    etag = get.headers["etag"]
    for header in (etag, f"W/{etag}", f'"x", {etag}', "*"):
        response = passthrough.get("/img/chelsea.png", headers={"If-None-Match": header})
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["etag"] == etag
        assert response.headers["cache-control"] == DEFAULT_CACHE_CONTROL
    assert passthrough.get("/img/chelsea.png", headers={"If-None-Match": '"other"'}).status_code == 200


def test_passthrough_etag_follows_the_file(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    source = save_image(tmp_path / "a.png", Image.new("RGB", (8, 8), (1, 1, 1)))
    client = make_client(source={"local_root": tmp_path}, http={"passthrough": True})
    before = client.get("/img/a.png").headers["etag"]
    info = source.stat()
    os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns + 3_000_000_000))
    after = client.get("/img/a.png", headers={"If-None-Match": before})
    assert after.status_code == 200
    assert after.headers["etag"] != before


@pytest.mark.parametrize("name", ["not_an_image.jpg", "empty.png"])
def test_passthrough_refuses_non_images(passthrough: TestClient, name: str) -> None:
    response = passthrough.get(f"/img/{name}")
    assert_problem(response, 415)
    assert b"<script>" not in response.content


def test_passthrough_limits_and_missing(make_client: Callable[..., TestClient]) -> None:
    client = make_client(http={"passthrough": True}, limits={"max_source_bytes": 1000})
    assert_problem(client.get("/img/chelsea.png"), 413)
    assert_problem(client.get("/img/nope.png"), 404)


def test_passthrough_with_parameters_transforms(passthrough: TestClient, source_root: Path) -> None:
    response = passthrough.get("/img/chelsea.png?w=50&fm=png")
    image = assert_image_response(response, "image/png")
    assert image.size == (50, 33)
    assert response.content != (source_root / "chelsea.png").read_bytes()


def test_without_passthrough_originals_are_reencoded(client: TestClient, source_root: Path) -> None:
    original_bytes = (source_root / "chelsea.png").read_bytes()
    with Image.open(source_root / "chelsea.png") as original:
        assert {"icc_profile", "xmp"} <= set(original.info)  # the sample carries metadata
        original_size = original.size
    response = client.get("/img/chelsea.png")
    assert response.headers["x-cache"] == "MISS"
    assert response.content != original_bytes
    image = assert_image_response(response, "image/jpeg")  # `Accept: */*`: legacy bucket, no alpha
    assert image.size == original_size
    assert not set(image.info) & {"icc_profile", "xmp", "exif", "XML:com.adobe.xmp", "comment"}
    assert len(image.getexif()) == 0
    assert "accept-ranges" not in response.headers
    assert "last-modified" not in response.headers


# --- OpenAPI ------------------------------------------------------------------------------------------------

GRAVITY_CORNERS = ["northeast", "northwest", "southeast", "southwest"]
EXPECTED_PARAMETERS: dict[str, dict[str, Any]] = {
    "w": {"type": "integer", "minimum": 1, "maximum": 8192},
    "h": {"type": "integer", "minimum": 1, "maximum": 8192},
    "resize": {"type": "string"},
    "fit": {"type": "string", "enum": ["inside", "cover", "contain", "fill", "outside"]},
    "g": {"type": "string", "enum": ["center", "north", "south", "east", "west", *GRAVITY_CORNERS, "focal"]},
    "fx": {"type": "number", "minimum": 0, "maximum": 1},
    "fy": {"type": "number", "minimum": 0, "maximum": 1},
    "dpr": {"type": "number", "minimum": 1, "maximum": 4},
    "enlarge": {"enum": [0, 1]},
    "fm": {"type": "string"},
    "q": {"type": "integer", "minimum": 1, "maximum": 100},
    "bg": {"type": "string"},
    "crop": {"type": "string"},
    "rot": {"type": "integer", "enum": [0, 90, 180, 270]},
    "flip": {"type": "string", "enum": ["h", "v", "hv"]},
}


def test_openapi_document_is_served_with_unique_operation_ids(client: TestClient) -> None:
    # FastAPI warns about duplicate operation ids (GET and HEAD of one api_route): warnings are errors here
    response = client.get("/openapi.json")
    assert response.status_code == 200
    ids = [op["operationId"] for item in response.json()["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_openapi_documents_get_and_head(client: TestClient) -> None:
    document = openapi_document(client)
    assert {"get", "head"} <= set(document["paths"]["/img/{path}"])
    assert {"get", "head"} <= set(document["paths"]["/healthz"])
    path_params = [p for p in image_operation(document)["parameters"] if p["in"] == "path"]
    assert [p["name"] for p in path_params] == ["path"]


@pytest.mark.parametrize("method", ["get", "head"])
def test_openapi_image_responses(client: TestClient, method: str) -> None:
    operation = image_operation(openapi_document(client), method)
    responses = operation["responses"]
    assert_documented_outputs(operation, IMAGE_MEDIA_TYPES)
    assert "304" in responses
    for status in ("400", "404", "413", "415", "503"):
        content = responses[status]["content"]
        assert list(content) == ["application/problem+json"]
        schema = content["application/problem+json"]["schema"]
        assert set(PROBLEM_FIELDS) <= set(schema["required"])
        assert set(PROBLEM_FIELDS) <= set(schema["properties"])


def test_openapi_documents_only_problem_json_errors(client: TestClient) -> None:
    responses = image_operation(openapi_document(client))["responses"]
    for status, response in responses.items():
        if status == "default" or int(status) >= 400:
            assert set(response["content"]) == {"application/problem+json"}, status


def test_openapi_documents_every_query_parameter(client: TestClient) -> None:
    operation = image_operation(openapi_document(client))
    query = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert set(EXPECTED_PARAMETERS) <= set(query)  # request-level parameters (signature, preset...) may join them
    assert all(p["description"] and p["schema"].get("type") for p in query.values())
    for name, expected in EXPECTED_PARAMETERS.items():
        schema = query[name]["schema"]
        assert query[name]["required"] is False
        assert query[name]["description"]
        for key, value in expected.items():
            if key == "enum" and schema["type"] == "string":  # features may add choices, never remove them
                assert set(value) <= set(schema[key]), name
            else:
                assert schema[key] == value, (name, key)
    assert set(query["fm"]["schema"]["enum"]) >= {"auto", "jpeg", "png", "webp", "avif", "gif"}
    for name in ("resize", "bg", "crop"):
        assert query[name]["schema"]["pattern"]
    assert query["enlarge"]["schema"].get("type") in ("integer", "string", "boolean")
    # aliases are documented in the description of the parameter they stand for
    for name, alias in (("w", "width"), ("h", "height"), ("fm", "format"), ("q", "quality"), ("rot", "rotate")):
        assert alias in query[name]["description"]


def test_openapi_follows_the_configured_limits(make_client: Callable[..., TestClient]) -> None:
    client = make_client(limits={"max_width": 1000, "max_height": 700})
    query = {p["name"]: p for p in image_operation(openapi_document(client))["parameters"] if p["in"] == "query"}
    assert query["w"]["schema"]["maximum"] == 1000
    assert query["h"]["schema"]["maximum"] == 700
    assert_problem(client.get("/img/chelsea.png?w=1001"), 400)


def test_openapi_without_avif(make_client: Callable[..., TestClient]) -> None:
    client = make_client(formats={"avif": False})
    document = openapi_document(client)
    for method in ("get", "head"):
        operation = image_operation(document, method)
        assert_documented_outputs(operation, IMAGE_MEDIA_TYPES - {"image/avif"})
        fm = next(p for p in operation["parameters"] if p["name"] == "fm")
        assert "avif" not in fm["schema"]["enum"]
        assert {"auto", "jpeg", "png", "webp", "gif"} <= set(fm["schema"]["enum"])


def test_docs_page(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text
    assert response.headers["x-content-type-options"] == "nosniff"


# --- misc ---------------------------------------------------------------------------------------------------


def test_nested_path_and_bytes_roundtrip(client: TestClient, source_root: Path) -> None:
    response = client.get("/img/sub/nested.png?fm=png")
    image = assert_image_response(response, "image/png")
    with Image.open(source_root / "sub" / "nested.png") as expected:
        assert image.convert("RGB").tobytes() == expected.convert("RGB").tobytes()


def test_repeated_accept_headers_are_one_list(client: TestClient) -> None:
    """RFC 9110: repeated headers mean their comma-joined list; a cache that joins them keys on the same bucket."""
    split = client.get("/img/chelsea.png?w=40", headers=[("Accept", "image/png"), ("Accept", "image/avif")])
    joined = client.get("/img/chelsea.png?w=40", headers={"Accept": "image/png, image/avif"})
    assert split.headers["content-type"] == joined.headers["content-type"] == "image/avif"
    assert split.headers["etag"] == joined.headers["etag"]
