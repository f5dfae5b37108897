"""Observability: /metrics (Prometheus, one process and `--workers N`), /healthz, /readyz, access and error
logs, and Server-Timing, all checked against real requests."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

import imgproxy.pipeline.decode
import imgproxy.service
from imgproxy.app import create_app
from imgproxy.logs import JsonFormatter
from imgproxy.pipeline.render import render
from imgproxy.settings import Settings
from imgproxy.signing import sign
from tests.conftest import decode, free_port

IMG_ROUTE = "/img/{path}"  # the route template: one label value whatever the path (bounded cardinality)
STAGES = ("queue", "decode", "transform", "encode")
TIMEOUT = 10.0  # seconds: every wait in this file is bounded by it
STARTUP = 45.0  # seconds for `imgproxy serve --workers 2` to start both workers (slow on a loaded machine)
SIGNING_KEY = "k3y-0123456789abcdefXYZ"

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- helpers ------------------------------------------------------------------------------------------------


def parse_metrics(text: str) -> Metrics:
    samples: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(client: TestClient | httpx.Client) -> Metrics:
    response = client.get("/metrics")
    assert response.status_code == 200
    return parse_metrics(response.text)


def total(samples: Metrics, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


def label_values(samples: Metrics, name: str, label: str) -> set[str]:
    return {dict(have)[label] for (sample, have) in samples if sample == name and label in dict(have)}


def server_timing(header: str) -> dict[str, float]:
    """`queue;dur=0.3, decode;dur=10.9` → {"queue": 0.3, "decode": 10.9} (milliseconds)."""
    timings = {}
    for entry in header.split(","):
        name, _, params = entry.strip().partition(";")
        assert params.startswith("dur="), header
        timings[name] = float(params.removeprefix("dur="))
    return timings


def slow_down(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[int]:
    """Make every render sleep first (outside its own stage timings); returns a list counting the calls."""
    real = render
    calls: list[int] = []

    def slow_render(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(imgproxy.service, "render", slow_render)
    return calls


def slow_decode(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make the decode stage itself take `seconds` longer (it is measured inside the render)."""
    real = imgproxy.pipeline.decode.open_image

    def slow_open(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(imgproxy.pipeline.decode, "open_image", slow_open)


@asynccontextmanager
async def async_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Concurrent requests into one app, on this test's event loop; the service is closed afterwards."""
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=TIMEOUT) as client:
            yield client
    finally:
        await app.state.service.aclose()


async def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


class Records(logging.Handler):
    """Keeps the records of one logger, for the test to read."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def json_lines(self) -> list[dict[str, Any]]:
        formatter = JsonFormatter()
        return [json.loads(formatter.format(record)) for record in self.records]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """create_app reconfigures the "imgproxy" loggers; put them back as they were after each test."""
    names = ("imgproxy", "imgproxy.access", "imgproxy.error", "uvicorn", "uvicorn.error")
    loggers = [logging.getLogger(name) for name in names]
    saved = {logger.name: (logger.handlers[:], logger.level, logger.propagate) for logger in loggers}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def access_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("imgproxy.access")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# --- /metrics -----------------------------------------------------------------------------------------------


def test_metrics_endpoint_is_prometheus_text(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert response.headers["cache-control"] == "no-store"
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "imgproxy_http_requests",
        "imgproxy_http_request_duration_seconds",
        "imgproxy_stage_duration_seconds",
        "imgproxy_cache_events",
        "imgproxy_cache_bytes",
        "imgproxy_coalesced_requests",
        "imgproxy_renders_in_flight",
        "imgproxy_renders_queued",
        "imgproxy_rejected_requests",
        "imgproxy_source_fetch_errors",
    } <= names


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    assert client.get("/img/chelsea.png?w=50").status_code == 200
    assert client.get("/img/chelsea.png?w=50").status_code == 200  # a hit counts as well
    assert client.get("/img/coffee.png?w=abc").status_code == 400
    assert client.get("/img/no-such-file.png").status_code == 404
    assert client.get("/no/such/route").status_code == 404
    samples = scrape(client)

    name = "imgproxy_http_requests_total"
    assert total(samples, name, route=IMG_ROUTE, method="GET", status="200") == 2
    assert total(samples, name, route=IMG_ROUTE, method="GET", status="400") == 1
    assert total(samples, name, route=IMG_ROUTE, method="GET", status="404") == 1
    assert total(samples, name, route=IMG_ROUTE) == 4
    assert total(samples, name, route="unmatched", status="404") == 1
    # Paths never become label values: one series per route template, whatever was asked for.
    routes = label_values(samples, name, "route")
    assert routes == {IMG_ROUTE, "unmatched"}
    assert not any("chelsea" in route or "coffee" in route for route in routes)

    histogram = "imgproxy_http_request_duration_seconds"
    assert total(samples, histogram + "_count", route=IMG_ROUTE) == 4
    assert total(samples, histogram + "_bucket", route=IMG_ROUTE, le="+Inf") == 4
    assert 0 < total(samples, histogram + "_sum", route=IMG_ROUTE) < 4 * TIMEOUT
    # The scrape itself is recorded once it is answered: the next scrape sees it.
    assert total(scrape(client), name, route="/metrics", status="200") == 1


def test_duration_histogram_buckets_are_cumulative(client: TestClient) -> None:
    for width in (30, 31, 32):
        assert client.get(f"/img/astronaut.png?w={width}").status_code == 200
    samples = scrape(client)
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "imgproxy_http_request_duration_seconds_bucket" and dict(labels)["route"] == IMG_ROUTE
    )
    counts = [value for _, value in buckets]
    assert counts == sorted(counts)  # cumulative
    assert buckets[-1] == (float("inf"), 3)


def test_stage_histogram_is_fed_by_a_miss_and_not_by_a_hit(client: TestClient) -> None:
    assert client.get("/img/coffee.png?w=64").headers["x-cache"] == "MISS"
    after_miss = scrape(client)
    for stage in STAGES:
        assert total(after_miss, "imgproxy_stage_duration_seconds_count", stage=stage) == 1, stage
        assert total(after_miss, "imgproxy_stage_duration_seconds_sum", stage=stage) >= 0
    assert total(after_miss, "imgproxy_stage_duration_seconds_sum", stage="decode") > 0

    assert client.get("/img/coffee.png?w=64").headers["x-cache"] == "HIT"
    after_hit = scrape(client)
    for stage in STAGES:
        assert total(after_hit, "imgproxy_stage_duration_seconds_count", stage=stage) == 1, stage


def test_cache_events_evictions_and_bytes_held(make_client: Callable[..., TestClient]) -> None:
    client = make_client(cache={"max_bytes": 3000})  # room for two ~1.2 kB thumbnails, not three
    service = client.app.state.service  # type: ignore[attr-defined]
    sizes = []
    for width in (50, 52, 54, 50, 56):
        response = client.get(f"/img/chelsea.png?w={width}&fm=jpeg")
        assert response.status_code == 200
        sizes.append(len(response.content))
    assert all(size < 3000 for size in sizes)
    samples = scrape(client)

    assert service.cache.evictions > 0
    assert total(samples, "imgproxy_cache_events_total", tier="local", event="eviction") == service.cache.evictions
    assert total(samples, "imgproxy_cache_events_total", tier="local", event="miss") == service.cache.misses
    assert total(samples, "imgproxy_cache_events_total", tier="local", event="hit") == service.cache.hits
    assert service.cache.hits + service.cache.misses == 5
    assert 0 < service.cache.bytes_held <= 3000
    assert total(samples, "imgproxy_cache_bytes", tier="local") == service.cache.bytes_held
    assert len(service.cache) == 2


def test_cache_hit_and_miss_counts_follow_requests(client: TestClient) -> None:
    for _ in range(3):
        assert client.get("/img/astronaut.png?w=40").status_code == 200
    samples = scrape(client)
    assert total(samples, "imgproxy_cache_events_total", tier="local", event="miss") == 1
    assert total(samples, "imgproxy_cache_events_total", tier="local", event="hit") == 2
    assert total(samples, "imgproxy_cache_events_total", tier="local", event="eviction") == 0
    assert total(samples, "imgproxy_cache_bytes", tier="local") == client.app.state.service.cache.bytes_held > 0  # type: ignore[attr-defined]


class _Origin(http.server.BaseHTTPRequestHandler):
    png = b""

    def do_GET(self) -> None:
        if self.path == "/pic.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.png)))
            self.end_headers()
            self.wfile.write(self.png)
            return
        code = 404 if self.path == "/gone.png" else 500
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[str]:
    """A tiny origin on 127.0.0.1: /pic.png is an image, /gone.png a 404, anything else a 500."""
    buffer = io.BytesIO()
    Image.new("RGB", (60, 40), (20, 120, 220)).save(buffer, "PNG")
    _Origin.png = buffer.getvalue()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_fetch_stage_and_fetch_errors_by_kind(make_client: Callable[..., TestClient], origin: str) -> None:
    client = make_client(source={"origin_url": origin, "allow_private_addresses": True})
    fetched = client.get("/img/pic.png?w=30&fm=png")
    assert fetched.status_code == 200
    assert decode(fetched.content).size == (30, 20)
    assert client.get("/img/gone.png?w=30").status_code == 404
    assert client.get("/img/boom.png?w=30").status_code == 502
    samples = scrape(client)

    assert total(samples, "imgproxy_stage_duration_seconds_count", stage="fetch") == 3  # failed fetches too
    assert total(samples, "imgproxy_stage_duration_seconds_sum", stage="fetch") > 0
    assert total(samples, "imgproxy_source_fetch_errors_total", kind="not-found") == 1
    assert total(samples, "imgproxy_source_fetch_errors_total", kind="origin-failed") == 1
    assert total(samples, "imgproxy_source_fetch_errors_total") == 2
    # The fetched original is cached: another size of it fetches nothing more.
    assert client.get("/img/pic.png?w=20&fm=png").status_code == 200
    assert total(scrape(client), "imgproxy_stage_duration_seconds_count", stage="fetch") == 3


@pytest.mark.anyio
async def test_coalesced_burst_is_counted(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = slow_down(monkeypatch, 0.3)
    app = create_app(make_settings(limits={"workers": 2}, log={"level": "warning"}))
    async with async_client(app) as client:
        burst = await asyncio.gather(*(client.get("/img/coffee.png?w=70&fm=png") for _ in range(6)))
        samples = parse_metrics((await client.get("/metrics")).text)
    assert [response.status_code for response in burst] == [200] * 6
    assert len({response.content for response in burst}) == 1
    assert len(calls) == 1  # one render for the whole burst
    assert total(samples, "imgproxy_coalesced_requests_total") == 5
    assert total(samples, "imgproxy_cache_events_total", tier="local", event="miss") == 6
    assert total(samples, "imgproxy_stage_duration_seconds_count", stage="decode") == 1
    assert total(samples, "imgproxy_renders_in_flight") == 0
    assert total(samples, "imgproxy_renders_queued") == 0


@pytest.mark.anyio
async def test_in_flight_and_queued_gauges_move_and_return_to_zero(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_down(monkeypatch, 0.4)
    app = create_app(make_settings(limits={"workers": 1, "max_queue": 2}, log={"level": "warning"}))
    service = app.state.service
    async with async_client(app) as client:
        renders = [asyncio.ensure_future(client.get(f"/img/chelsea.png?w={w}")) for w in (40, 41)]
        await wait_until(lambda: service.limiter.queued == 1)
        during = parse_metrics((await client.get("/metrics")).text)
        responses = await asyncio.gather(*renders)
        after = parse_metrics((await client.get("/metrics")).text)
    assert [response.status_code for response in responses] == [200, 200]
    assert total(during, "imgproxy_renders_in_flight") == 1
    assert total(during, "imgproxy_renders_queued") == 1
    assert total(after, "imgproxy_renders_in_flight") == 0
    assert total(after, "imgproxy_renders_queued") == 0


@pytest.mark.anyio
async def test_overload_is_rejected_and_counted(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_down(monkeypatch, 0.3)
    app = create_app(make_settings(limits={"workers": 1, "max_queue": 0}, log={"level": "warning"}))
    service = app.state.service
    async with async_client(app) as client:
        first = asyncio.ensure_future(client.get("/img/chelsea.png?w=60"))
        await wait_until(lambda: service.limiter.running == 1)
        rejected = await client.get("/img/chelsea.png?w=61")  # another image: it cannot join the render
        served = await first
        samples = parse_metrics((await client.get("/metrics")).text)
    assert served.status_code == 200
    assert rejected.status_code == 503
    assert rejected.headers["retry-after"] == "1"
    assert rejected.headers["content-type"] == "application/problem+json"
    assert total(samples, "imgproxy_rejected_requests_total", reason="queue_full") == 1
    assert total(samples, "imgproxy_http_requests_total", route=IMG_ROUTE, status="503") == 1
    assert total(samples, "imgproxy_http_requests_total", route=IMG_ROUTE, status="200") == 1
    assert total(samples, "imgproxy_renders_in_flight") == 0
    assert total(samples, "imgproxy_renders_queued") == 0


@pytest.mark.anyio
async def test_each_rejected_request_is_counted_once(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_down(monkeypatch, 0.3)
    app = create_app(make_settings(limits={"workers": 1, "max_queue": 0}, log={"level": "warning"}))
    service = app.state.service
    async with async_client(app) as client:
        first = asyncio.ensure_future(client.get("/img/chelsea.png?w=62"))
        await wait_until(lambda: service.limiter.running == 1)
        rejected = [await client.get(f"/img/chelsea.png?w={w}") for w in (63, 64)]
        await first
        samples = parse_metrics((await client.get("/metrics")).text)
    assert [response.status_code for response in rejected] == [503, 503]
    assert total(samples, "imgproxy_http_requests_total", status="503") == 2
    assert total(samples, "imgproxy_rejected_requests_total") == 2


# --- /healthz and /readyz -----------------------------------------------------------------------------------


def test_healthz_is_200(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_200_with_its_checks(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["status"] == "ready"
    checks = body["checks"]
    assert set(checks) == {"settings", "source", "capacity"}  # no "redis" check without a Redis URL
    assert all(check["ok"] is True for check in checks.values())
    assert checks["source"]["kind"] == "local"
    assert checks["capacity"]["running"] == checks["capacity"]["queued"] == 0


def test_readyz_is_503_when_the_local_root_is_gone(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (10, 10)).save(root / "a.png")
    client = make_client(source={"local_root": root})
    assert client.get("/readyz").status_code == 200
    shutil.rmtree(root)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["source"]["ok"] is False
    assert body["checks"]["capacity"]["ok"] is True
    assert client.get("/healthz").status_code == 200  # alive, just not ready
    root.mkdir()
    assert client.get("/readyz").status_code == 200  # and ready again once the root is back


def test_readyz_reports_a_remote_source_as_unchecked(make_client: Callable[..., TestClient], origin: str) -> None:
    client = make_client(source={"origin_url": origin, "allow_private_addresses": True})
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["source"] == {"ok": True, "kind": "remote", "checked": False}


@pytest.mark.anyio
async def test_readyz_is_503_while_saturated(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_down(monkeypatch, 0.3)
    app = create_app(make_settings(limits={"workers": 1, "max_queue": 0}, log={"level": "warning"}))
    service = app.state.service
    async with async_client(app) as client:
        render = asyncio.ensure_future(client.get("/img/coffee.png?w=33"))
        await wait_until(lambda: service.limiter.running == 1)
        busy = await client.get("/readyz")
        assert (await render).status_code == 200
        idle = await client.get("/readyz")
        assert (await client.get("/healthz")).status_code == 200
    assert busy.status_code == 503
    capacity = busy.json()["checks"]["capacity"]
    assert capacity == {"ok": False, "running": 1, "queued": 0}
    assert busy.json()["checks"]["source"]["ok"] is True
    assert idle.status_code == 200
    assert idle.json()["checks"]["capacity"] == {"ok": True, "running": 0, "queued": 0}


# --- logs ---------------------------------------------------------------------------------------------------


def test_access_log_is_one_json_line_per_request_on_stderr(
    make_client: Callable[..., TestClient], capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(log={"level": "info", "format": "json"})  # binds its handler to the captured stderr
    capsys.readouterr()
    responses = [client.get("/img/chelsea.png?w=45"), client.get("/img/chelsea.png?w=45"), client.get("/healthz")]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [entry for entry in entries if entry["logger"] == "imgproxy.access"]
    assert len(access) == len(responses) == 3
    assert [entry["path"] for entry in access] == ["/img/chelsea.png?w=45", "/img/chelsea.png?w=45", "/healthz"]
    for entry, response in zip(access, responses, strict=True):
        assert entry["level"] == "info"
        assert entry["method"] == "GET"
        assert entry["status"] == response.status_code == 200
        assert entry["bytes"] == int(response.headers["content-length"]) == len(response.content)
        assert entry["format"] == response.headers["content-type"]
        assert entry["time"].endswith("Z")
    assert [entry["cache"] for entry in access] == ["miss", "local", None]


def test_access_log_fields(make_client: Callable[..., TestClient], access_log: Records) -> None:
    client = make_client(log={"level": "info", "format": "json"})
    timed = []
    for target in ("/img/coffee.png?w=80&fm=webp", "/img/coffee.png?w=80&fm=webp", "/img/coffee.png?w=oops"):
        started = time.perf_counter()
        response = client.get(target)
        timed.append((response, (time.perf_counter() - started) * 1000))
    entries = access_log.json_lines()
    assert len(entries) == 3
    for entry, (response, wall_ms) in zip(entries, timed, strict=True):
        assert entry["logger"] == "imgproxy.access"
        assert entry["method"] == "GET"
        assert entry["status"] == response.status_code
        assert entry["bytes"] == int(response.headers["content-length"]) == len(response.content)
        assert entry["format"] == response.headers["content-type"]
        assert isinstance(entry["duration_ms"], float | int)
        assert 0 <= entry["duration_ms"] <= wall_ms + 1
    assert [entry["status"] for entry in entries] == [200, 200, 400]
    assert [entry["cache"] for entry in entries] == ["miss", "local", None]
    assert [entry["format"] for entry in entries] == ["image/webp", "image/webp", "application/problem+json"]


def test_access_log_drops_the_signature(make_client: Callable[..., TestClient], access_log: Records) -> None:
    client = make_client(security={"signing_keys": [SIGNING_KEY]}, log={"level": "info"})
    with_options = sign("/img/chelsea.png?w=44&fm=png", SIGNING_KEY.encode())
    bare = sign("/img/coffee.png", SIGNING_KEY.encode())
    signatures = [with_options.rpartition("s=")[2], bare.rpartition("s=")[2]]
    assert client.get(with_options).status_code == 200
    assert client.get(bare).status_code == 200
    assert client.get("/img/chelsea.png?w=44&fm=png&s=" + "A" * 43).status_code == 403
    entries = access_log.json_lines()
    assert [entry["path"] for entry in entries] == [
        "/img/chelsea.png?w=44&fm=png",
        "/img/coffee.png",
        "/img/chelsea.png?w=44&fm=png",
    ]
    assert [entry["status"] for entry in entries] == [200, 200, 403]
    written = json.dumps(entries)
    assert all(signature not in written for signature in signatures)
    assert "A" * 43 not in written


def test_access_log_is_off_below_info(make_client: Callable[..., TestClient], access_log: Records) -> None:
    client = make_client(log={"level": "warning"})
    assert client.get("/img/chelsea.png?w=46").status_code == 200
    assert access_log.records == []
    assert logging.getLogger("imgproxy").level == logging.WARNING


def test_log_format_comes_from_settings(make_client: Callable[..., TestClient]) -> None:
    make_client(log={"level": "debug", "format": "json"})
    handler = logging.getLogger("imgproxy").handlers[0]
    assert isinstance(handler.formatter, JsonFormatter)
    assert logging.getLogger("imgproxy").level == logging.DEBUG
    make_client(log={"level": "error", "format": "text"})
    handler = logging.getLogger("imgproxy").handlers[0]
    assert not isinstance(handler.formatter, JsonFormatter)
    assert logging.getLogger("imgproxy").level == logging.ERROR


def test_text_access_log_keeps_the_request_fields(
    make_client: Callable[..., TestClient], capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(log={"level": "info", "format": "text"})
    capsys.readouterr()
    assert client.get("/img/chelsea.png?w=47").status_code == 200
    lines = [line for line in capsys.readouterr().err.splitlines() if "imgproxy.access" in line]
    assert len(lines) == 1
    assert "/img/chelsea.png?w=47" in lines[0]
    assert "200" in lines[0]


def test_unhandled_error_is_logged_and_counted(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, access_log: Records
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom in the pipeline")

    monkeypatch.setattr(imgproxy.service, "render", broken)
    errors = Records()
    logging.getLogger("imgproxy.error").addHandler(errors)
    try:
        app = create_app(make_settings(log={"level": "info", "format": "json"}))
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/img/chelsea.png?w=48")
            samples = scrape(client)
    finally:
        logging.getLogger("imgproxy.error").removeHandler(errors)
    assert response.status_code == 500
    assert response.json()["detail"] == "unexpected error"  # nothing internal leaks to the client
    assert "boom" not in response.text
    [error] = errors.json_lines()
    assert error["level"] == "error"
    assert error["logger"] == "imgproxy.error"
    assert "/img/chelsea.png" in error["message"]
    assert "RuntimeError: boom in the pipeline" in error["exception"]
    [access] = [entry for entry in access_log.json_lines() if entry["path"].startswith("/img/")]
    assert access["status"] == 500
    assert access["path"] == "/img/chelsea.png?w=48"
    assert total(samples, "imgproxy_http_requests_total", route=IMG_ROUTE, status="500") == 1


# --- Server-Timing ------------------------------------------------------------------------------------------


def test_server_timing_on_a_miss_only(client: TestClient) -> None:
    started = time.perf_counter()
    miss = client.get("/img/astronaut.png?w=120&fm=webp")
    wall_ms = (time.perf_counter() - started) * 1000
    assert miss.headers["x-cache"] == "MISS"
    timings = server_timing(miss.headers["server-timing"])
    assert list(timings) == list(STAGES)
    assert all(value >= 0 for value in timings.values())
    assert timings["decode"] > 0
    assert sum(timings.values()) <= wall_ms
    hit = client.get("/img/astronaut.png?w=120&fm=webp")
    assert hit.headers["x-cache"] == "HIT"
    assert "server-timing" not in hit.headers


def test_server_timing_measures_the_real_stage(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_decode(monkeypatch, 0.2)
    started = time.perf_counter()
    response = client.get("/img/coffee.png?w=90&fm=png")
    wall_ms = (time.perf_counter() - started) * 1000
    timings = server_timing(response.headers["server-timing"])
    assert timings["decode"] >= 195  # the 200 ms spent decoding is reported where it was spent
    assert timings["queue"] < timings["decode"] / 2  # the wait is not reported as queueing
    assert sum(timings.values()) <= wall_ms


@pytest.mark.anyio
async def test_server_timing_reports_the_queue_wait(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_decode(monkeypatch, 0.4)
    app = create_app(make_settings(limits={"workers": 1, "max_queue": 4}, log={"level": "warning"}))
    service = app.state.service

    async def timed(target: str) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        response = await client.get(target)
        return response, (time.perf_counter() - started) * 1000

    async with async_client(app) as client:
        first = asyncio.ensure_future(timed("/img/chelsea.png?w=71"))
        await wait_until(lambda: service.limiter.running == 1)
        (_, _), (second, wall_ms) = await asyncio.gather(first, timed("/img/chelsea.png?w=72"))
    timings = server_timing(second.headers["server-timing"])
    assert timings["queue"] >= 200  # it waited for the first render's thread
    assert timings["decode"] >= 395
    assert sum(timings.values()) <= wall_ms


@pytest.mark.anyio
async def test_server_timing_of_a_coalesced_request_is_accurate(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_decode(monkeypatch, 0.4)
    app = create_app(make_settings(limits={"workers": 2}, log={"level": "warning"}))
    target = "/img/astronaut.png?w=73"

    async def late() -> tuple[httpx.Response, float]:
        await asyncio.sleep(0.25)
        started = time.perf_counter()
        response = await client.get(target)
        return response, (time.perf_counter() - started) * 1000

    async with async_client(app) as client:
        leader, (follower, wall_ms) = await asyncio.gather(client.get(target), late())
    assert leader.status_code == follower.status_code == 200
    assert follower.headers["x-cache"] == "MISS"
    assert app.state.service.renders.coalesced == 1  # it joined the leader's render
    header = follower.headers.get("server-timing")
    assert header is None or sum(server_timing(header).values()) <= wall_ms


# --- `imgproxy serve --workers 2`: metrics merged across processes ------------------------------------------


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the server and its worker processes: SIGTERM to its group, SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(TIMEOUT)
    except subprocess.TimeoutExpired:  # pragma: no cover - only when shutdown hangs
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(TIMEOUT)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived the supervisor
        os.killpg(process.pid, signal.SIGKILL)


def test_metrics_are_merged_across_worker_processes(source_root: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith("IMGPROXY_") and name != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        IMGPROXY_LOG__LEVEL="warning",
        IMGPROXY_SOURCE__LOCAL_ROOT=str(source_root),
        IMGPROXY_LIMITS__WORKERS="1",
        TMPDIR=str(tmp_path),  # the metrics directory `serve` makes lands here, and goes with tmp_path
    )
    executable = Path(sys.executable).parent / "imgproxy"
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(executable), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            # A new connection per request (no keep-alive), so either worker may accept each one.
            limits = httpx.Limits(max_keepalive_connections=0)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT, limits=limits) as client:
                # Wait until both workers have built their app (each opens its own metrics files) and serve.
                deadline = time.monotonic() + STARTUP
                while True:
                    assert process.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, "imgproxy serve did not start both workers in time"
                    workers = {path.name for path in tmp_path.glob("imgproxy-metrics-*/counter_*.db")}
                    try:
                        if len(workers) == 2 and client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.1)
                sent, misses = 0, 0
                # The same image every time: each worker renders it once (its own MISS), then hits its cache.
                while sent < 20 or (misses < 2 and sent < 200):
                    response = client.get("/img/coffee.png?w=25&fm=png")
                    assert response.status_code == 200
                    size = len(response.content)
                    sent += 1
                    misses += response.headers["x-cache"] == "MISS"
                assert misses == 2, f"only one worker answered {sent} requests"
                assert client.get("/img/coffee.png?w=abc").status_code == 400
                scrapes = [scrape(client) for _ in range(6)]
        finally:
            stop_group(process)
    metrics_dirs = list(tmp_path.glob("imgproxy-metrics-*"))
    assert len(metrics_dirs) == 1, log.read_text()
    for samples in scrapes:  # whichever worker answered, it reports every worker's requests
        assert total(samples, "imgproxy_http_requests_total", route=IMG_ROUTE, status="200") == sent
        assert total(samples, "imgproxy_http_requests_total", route=IMG_ROUTE, status="400") == 1
        assert total(samples, "imgproxy_http_request_duration_seconds_count", route=IMG_ROUTE) == sent + 1
        assert total(samples, "imgproxy_cache_events_total", tier="local", event="miss") == 2
        assert total(samples, "imgproxy_cache_events_total", tier="local", event="hit") == sent - 2
        assert total(samples, "imgproxy_stage_duration_seconds_count", stage="decode") == 2
        assert total(samples, "imgproxy_renders_in_flight") == 0
    bytes_held = [total(samples, "imgproxy_cache_bytes", tier="local") for samples in scrapes]
    assert bytes_held == [2 * size] * len(scrapes)  # livesum: both workers hold the image
