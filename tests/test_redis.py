"""The shared result tier against a real redis-server on an ephemeral loopback port: two app instances
share results, keys are namespaced, versioned and expire, oversize results stay out, corrupt values are
misses, and a Redis outage (killed or hung) degrades to the local cache without failing a request."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

import imgproxy.service
import imgproxy.shared_cache
from imgproxy.app import create_app
from imgproxy.cache import CachedImage
from imgproxy.pipeline.render import render
from imgproxy.settings import Settings
from imgproxy.shared_cache import SharedCache, decode_entry, encode_entry
from tests.conftest import decode, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TIMEOUT = 10.0  # seconds: every wait in this file is bounded by it
FAST = 1.0  # seconds: no request may take longer than this because of Redis

pytestmark = pytest.mark.skipif(not os.path.exists(REDIS_SERVER), reason="redis-server is not installed")


# --- a real redis-server ------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def connect(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test stopped it
            self.process.kill()
        self.process.wait(TIMEOUT)


def start_redis(port: int | None = None) -> RedisServer:
    """redis-server on 127.0.0.1 without persistence; returns once it answers PING."""
    port = port or free_port()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, process)
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            assert process.poll() is None, "redis-server exited at start-up"
            assert time.monotonic() < deadline, "redis-server did not answer PING in time"
            try:
                with server.connect() as client:
                    if client.ping():
                        return server
            except redis.ConnectionError:
                time.sleep(0.02)
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def shared(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The module's server, emptied before the test."""
    with redis_server.connect() as client:
        client.flushall()
    yield redis_server


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A server of the test's own, which it may kill or freeze."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


# --- helpers ------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """create_app reconfigures the "imgproxy" loggers; put them back as they were after each test."""
    loggers = [logging.getLogger(name) for name in ("imgproxy", "imgproxy.shared_cache", "uvicorn", "uvicorn.error")]
    saved = {logger.name: (logger.handlers[:], logger.level, logger.propagate) for logger in loggers}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def warnings_logged() -> Iterator[Records]:
    """Records of "imgproxy.shared_cache" ("imgproxy" does not propagate, so attach to the logger itself)."""
    handler = Records()
    logger = logging.getLogger("imgproxy.shared_cache")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the renders (decodes) the services run."""
    real = render
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(imgproxy.service, "render", counted)
    return calls


def redis_events(client: TestClient) -> dict[str, float]:
    """imgproxy_cache_events_total{tier="redis"} by event."""
    events: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "imgproxy_cache_events_total" and sample.labels["tier"] == "redis":
                events[sample.labels["event"]] = sample.value
    return events


def timed_get(client: TestClient, target: str) -> tuple[Any, float]:
    started = time.perf_counter()
    response = client.get(target)
    return response, time.perf_counter() - started


def instance(make_client: Callable[..., TestClient], url: str, **cache: Any) -> TestClient:
    return make_client(cache={"redis_url": url, **cache}, log={"level": "warning"})


# --- sharing ------------------------------------------------------------------------------------------------


def test_two_instances_share_results(
    make_client: Callable[..., TestClient], shared: RedisServer, renders: list[int]
) -> None:
    a = instance(make_client, shared.url)
    b = instance(make_client, shared.url)
    target = "/img/astronaut.png?w=64&h=64&fit=cover&g=face&fm=webp"

    rendered = a.get(target)
    assert rendered.status_code == 200
    assert rendered.headers["x-cache"] == "MISS"
    assert "x-cache-tier" not in rendered.headers
    assert len(renders) == 1

    found = b.get(target)
    assert found.status_code == 200
    assert len(renders) == 1  # B did not decode: the result came from Redis
    assert found.headers["x-cache"] == "HIT"
    assert found.headers["x-cache-tier"] == "redis"
    assert found.headers["server-timing"].startswith("redis;dur=")  # only the lookup: nothing was rendered
    assert found.content == rendered.content
    assert decode(found.content).size == (64, 64)
    for header in ("etag", "content-type", "content-length", "vary", "cache-control", "x-gravity"):
        assert found.headers[header] == rendered.headers[header], header

    again = b.get(target)  # now in B's own cache
    assert again.headers["x-cache-tier"] == "local"
    assert again.content == rendered.content
    assert len(renders) == 1

    assert redis_events(a) == {"miss": 1, "store": 1}
    assert redis_events(b) == {"hit": 1}


def test_a_result_rendered_on_either_side_is_shared(
    make_client: Callable[..., TestClient], shared: RedisServer, renders: list[int]
) -> None:
    a = instance(make_client, shared.url)
    b = instance(make_client, shared.url)
    assert b.get("/img/coffee.png?w=40&fm=png").headers["x-cache"] == "MISS"
    assert a.get("/img/chelsea.png?w=40&fm=png").headers["x-cache"] == "MISS"
    assert a.get("/img/coffee.png?w=40&fm=png").headers["x-cache-tier"] == "redis"
    assert b.get("/img/chelsea.png?w=40&fm=png").headers["x-cache-tier"] == "redis"
    assert len(renders) == 2
    with shared.connect() as client:
        assert client.dbsize() == 2


def test_conditional_get_and_meta_through_redis(make_client: Callable[..., TestClient], shared: RedisServer) -> None:
    a = instance(make_client, shared.url)
    b = instance(make_client, shared.url)
    facts = a.get("/meta/chelsea.png")
    assert facts.status_code == 200
    shared_facts = b.get("/meta/chelsea.png")
    assert shared_facts.headers["x-cache-tier"] == "redis"
    assert shared_facts.json() == facts.json()
    assert shared_facts.headers["content-type"] == facts.headers["content-type"] == "application/json"
    etag = a.get("/img/chelsea.png?w=30").headers["etag"]
    assert b.get("/img/chelsea.png?w=30", headers={"If-None-Match": etag}).status_code == 304


# --- keys and values ----------------------------------------------------------------------------------------


def test_keys_are_namespaced_versioned_and_expire(make_client: Callable[..., TestClient], shared: RedisServer) -> None:
    client = instance(make_client, shared.url, redis_ttl=120)
    response = client.get("/img/chelsea.png?w=48&fm=png")
    assert response.status_code == 200
    with shared.connect() as inspect:
        keys = inspect.keys("*")
        assert keys == [b"imgproxy:v1:" + response.headers["etag"].strip('"').encode()]
        ttl = inspect.ttl(keys[0])
        raw = inspect.get(keys[0])
    assert 110 <= ttl <= 120
    assert isinstance(raw, bytes)
    header, _, content = raw.partition(b"\n")
    fields = json.loads(header)
    assert fields["media_type"] == response.headers["content-type"] == "image/png"
    assert (fields["width"], fields["height"]) == decode(response.content).size == (48, 32)
    assert content == response.content
    stored = decode_entry(raw, response.headers["etag"])
    assert fields["etag"] == response.headers["etag"]
    assert stored.content == response.content
    assert stored.media_type == "image/png"


def test_namespaces_do_not_share(make_client: Callable[..., TestClient], shared: RedisServer) -> None:
    tenant_a = instance(make_client, shared.url, redis_namespace="tenant-a")
    tenant_b = instance(make_client, shared.url, redis_namespace="tenant-b")
    assert tenant_a.get("/img/coffee.png?w=36").headers["x-cache"] == "MISS"
    assert tenant_b.get("/img/coffee.png?w=36").headers["x-cache"] == "MISS"
    with shared.connect() as inspect:
        keys = sorted(key.decode() for key in inspect.keys("*"))
    assert [key.rsplit(":", 1)[0] for key in keys] == ["tenant-a:v1", "tenant-b:v1"]
    assert len({key.rsplit(":", 1)[1] for key in keys}) == 1  # the same result, in two namespaces


def test_another_format_version_does_not_read_old_entries(
    make_client: Callable[..., TestClient], shared: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = instance(make_client, shared.url)
    assert old.get("/img/coffee.png?w=37").headers["x-cache"] == "MISS"
    monkeypatch.setattr(imgproxy.shared_cache, "FORMAT_VERSION", 2)
    new = instance(make_client, shared.url)
    assert new.get("/img/coffee.png?w=37").headers["x-cache"] == "MISS"  # v1 entries are not found
    with shared.connect() as inspect:
        prefixes = sorted(key.decode().rsplit(":", 1)[0] for key in inspect.keys("*"))
    assert prefixes == ["imgproxy:v1", "imgproxy:v2"]


def test_entry_round_trip() -> None:
    image = CachedImage(b"\x89PNG\r\n\x1a\n\nbytes\n", "image/png", 3, 2, (("X-Gravity", "smart; no face found"),))
    assert decode_entry(encode_entry(image, '"abc"'), '"abc"') == image
    with pytest.raises(ValueError, match="another key"):
        decode_entry(encode_entry(image, '"abc"'), '"xyz"')


# --- size limit ---------------------------------------------------------------------------------------------


def test_oversize_results_are_served_but_not_stored(
    make_client: Callable[..., TestClient], shared: RedisServer
) -> None:
    client = instance(make_client, shared.url, redis_max_value_bytes=200)
    response = client.get("/img/chelsea.png?w=120&fm=png")
    assert response.status_code == 200
    assert len(response.content) > 200
    assert decode(response.content).size == (120, 80)
    with shared.connect() as inspect:
        assert inspect.dbsize() == 0
    assert redis_events(client) == {"miss": 1}
    # A small result under the same limit is stored.
    placeholder = client.get("/img/chelsea.png?fm=blurhash")
    assert placeholder.status_code == 200
    with shared.connect() as inspect:
        assert inspect.dbsize() == 1
        [key] = inspect.keys("*")
        assert len(inspect.get(key) or b"") <= 200


def test_max_value_bytes_is_inclusive(make_client: Callable[..., TestClient], shared: RedisServer) -> None:
    target = "/img/coffee.png?w=50&fm=png"
    assert instance(make_client, shared.url).get(target).status_code == 200
    with shared.connect() as inspect:
        [key] = inspect.keys("*")
        size = len(inspect.get(key) or b"")
        inspect.flushall()
    assert instance(make_client, shared.url, redis_max_value_bytes=size - 1).get(target).status_code == 200
    with shared.connect() as inspect:
        assert inspect.dbsize() == 0
    assert instance(make_client, shared.url, redis_max_value_bytes=size).get(target).status_code == 200
    with shared.connect() as inspect:
        assert inspect.dbsize() == 1


# --- bad values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "corrupt",
    [
        b"garbage",
        b"",
        b"{}\n\x89PNG",
        b"[1, 2]\n\x89PNG",
        b"\xff\xfe\x00\n\x89PNG",
        b'{"media_type": "image/png", "width": "wide", "height": 1, "headers": []}\nxx',
        b'{"media_type": "image/png", "width": 1, "height": 1, "headers": [["only-a-name"]]}\nxx',
        b'{"media_type": "image/png", "width": 1, "height": 1, "headers": null}\nxx',
    ],
)
def test_a_corrupt_value_is_a_miss(
    make_client: Callable[..., TestClient], shared: RedisServer, warnings_logged: Records, corrupt: bytes
) -> None:
    target = "/img/chelsea.png?w=52&fm=png"
    good = instance(make_client, shared.url).get(target)
    with shared.connect() as inspect:
        [key] = inspect.keys("*")
        inspect.set(key, corrupt, ex=60)
    reader = instance(make_client, shared.url)
    response = reader.get(target)
    assert response.status_code == 200
    assert response.headers["x-cache"] == "MISS"  # rendered again, not served from the bad value
    assert response.content == good.content
    assert redis_events(reader) == {"error": 1, "store": 1}
    assert warnings_logged.records == []  # bad data is not an outage: the tier stays in use
    with shared.connect() as inspect:
        assert inspect.get(key) != corrupt  # the render replaced it
    assert instance(make_client, shared.url).get(target).headers["x-cache-tier"] == "redis"


def test_a_key_of_another_type_is_not_a_500(make_client: Callable[..., TestClient], shared: RedisServer) -> None:
    target = "/img/chelsea.png?w=53&fm=png"
    etag = instance(make_client, shared.url).get(target).headers["etag"]
    with shared.connect() as inspect:
        key = "imgproxy:v1:" + etag.strip('"')
        inspect.delete(key)
        inspect.hset(key, "field", "value")  # WRONGTYPE for GET
    response = instance(make_client, shared.url).get(target)
    assert response.status_code == 200
    assert response.headers["x-cache"] == "MISS"
    assert decode(response.content).size == (53, 35)


# --- outages ------------------------------------------------------------------------------------------------


def test_redis_killed_mid_test(
    make_client: Callable[..., TestClient], private_redis: RedisServer, warnings_logged: Records
) -> None:
    a = instance(make_client, private_redis.url)
    assert a.get("/img/coffee.png?w=41").headers["x-cache"] == "MISS"
    assert a.get("/readyz").json()["checks"]["redis"] == {"ok": True, "reachable": True}

    private_redis.stop()

    old, old_seconds = timed_get(a, "/img/coffee.png?w=41")
    assert old.status_code == 200
    assert old.headers["x-cache-tier"] == "local"
    new, new_seconds = timed_get(a, "/img/coffee.png?w=42")
    assert new.status_code == 200
    assert new.headers["x-cache"] == "MISS"
    assert decode(new.content).size == (42, 28)
    for width in (43, 44, 45):  # while it backs off, Redis is not even tried
        response, seconds = timed_get(a, f"/img/coffee.png?w={width}")
        assert response.status_code == 200
        assert seconds < FAST
    assert old_seconds < FAST
    assert new_seconds < FAST
    assert redis_events(a)["error"] == 1

    ready = a.get("/readyz")
    assert ready.status_code == 200  # a Redis outage does not make the replica unready
    assert ready.json()["checks"]["redis"] == {"ok": True, "reachable": False}

    b = instance(make_client, private_redis.url)  # an instance that never saw Redis up
    fresh, seconds = timed_get(b, "/img/coffee.png?w=41")
    assert fresh.status_code == 200
    assert fresh.headers["x-cache"] == "MISS"
    assert fresh.content == old.content
    assert seconds < FAST
    assert redis_events(b)["error"] == 1

    messages = [record.getMessage() for record in warnings_logged.records]
    assert len(messages) == 2  # one per instance: the backoff keeps it from repeating per request
    assert all(record.levelno == logging.WARNING for record in warnings_logged.records)
    assert all("redis unavailable" in message for message in messages)


def test_hung_redis_costs_at_most_its_timeout(
    make_client: Callable[..., TestClient], private_redis: RedisServer, warnings_logged: Records
) -> None:
    client = instance(make_client, private_redis.url)
    assert client.get("/img/chelsea.png?w=54").headers["x-cache"] == "MISS"
    os.kill(private_redis.process.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        for target in ("/img/chelsea.png?w=55", "/img/chelsea.png?w=56", "/img/chelsea.png?w=54"):
            response, seconds = timed_get(client, target)
            assert response.status_code == 200
            assert seconds < FAST, target
        ready, seconds = timed_get(client, "/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["redis"]["reachable"] is False
        assert seconds < FAST
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)
    assert redis_events(client)["error"] == 1
    assert "TimeoutError" in warnings_logged.records[0].getMessage()


def test_unreachable_redis_from_the_start(make_client: Callable[..., TestClient], warnings_logged: Records) -> None:
    client = instance(make_client, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    response, seconds = timed_get(client, "/img/astronaut.png?w=30")
    assert response.status_code == 200
    assert seconds < FAST
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis"] == {"ok": True, "reachable": False}
    assert redis_events(client) == {"error": 1}
    assert len(warnings_logged.records) == 1


@pytest.mark.anyio
async def test_the_tier_comes_back_after_its_backoff() -> None:
    port = free_port()
    events: list[str] = []
    cache = SharedCache(
        f"redis://127.0.0.1:{port}/0", namespace="t", ttl=60, max_value_bytes=1000, on_event=events.append, backoff=0.3
    )
    image = CachedImage(b"pixels", "image/png", 1, 1)
    server = None
    try:
        assert await cache.get('"abc"') is None  # nothing listens: an error, then a backoff
        assert events == ["error"]
        await cache.put('"abc"', image)
        assert await cache.get('"abc"') is None
        assert events == ["error"]  # not even tried while backing off
        assert await cache.ping() is False
        started = time.monotonic()
        server = await asyncio.to_thread(start_redis, port)
        await asyncio.sleep(max(0.0, 0.35 - (time.monotonic() - started)))
        assert await cache.ping() is True
        await cache.put('"abc"', image)
        assert await cache.get('"abc"') == image
        assert events == ["error", "store", "hit"]
        assert cache.key('"abc"') == "t:v1:abc"
    finally:
        await cache.aclose()
        if server is not None:
            server.stop()


def test_an_app_driven_outside_its_lifespan_never_fails_because_of_redis(
    make_settings: Callable[..., Settings], shared: RedisServer
) -> None:
    app = create_app(make_settings(cache={"redis_url": shared.url}, log={"level": "error"}))
    client = TestClient(app, raise_server_exceptions=False)  # no `with`: each request runs on a new event loop
    try:
        statuses = [client.get(target).status_code for target in ("/img/coffee.png?w=57", "/img/coffee.png?w=58")]
        statuses.append(client.get("/readyz").status_code)
    finally:
        # Connections left on closed loops: collect them here, so their ResourceWarnings stay in this test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del client, app
            gc.collect()
    assert statuses == [200, 200, 200]
