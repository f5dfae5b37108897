"""Clients that leave: a render still waiting for a thread is dropped, so it cannot crowd out the
clients that stay. Over a real uvicorn server (a disconnect is a closed socket), and on the parts."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imgproxy.app import create_app
from imgproxy.cache import Coalescer
from imgproxy.disconnect import unless_gone
from imgproxy.errors import Overloaded
from imgproxy.limiter import WorkLimiter
from imgproxy.settings import Settings
from tests.conftest import decode, serving

TIMEOUT = 20.0  # seconds: every wait in this file is bounded by it
SLOW = "/img/noise.jpg?fm=png&w={w}"  # a 12 MP noise PNG encode: seconds of one render thread
QUICK = "/img/noise.jpg?fm=jpeg&w={w}"


@pytest.fixture(scope="module")
def noise_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("noise")
    Image.effect_noise((4000, 3000), 80).convert("RGB").save(root / "noise.jpg", quality=95)
    return root


@pytest.fixture
def origin(noise_root: Path) -> Iterator[str]:
    """One render thread, two places in the queue."""
    settings = Settings(
        _env_file=None, source={"local_root": noise_root}, limits={"workers": 1, "max_queue": 2, "render_timeout": 60}
    )
    with serving(create_app(settings)) as url:
        yield url


def capacity(client: httpx.Client) -> dict[str, Any]:
    checks: dict[str, Any] = client.get("/readyz").json()["checks"]
    return dict(checks["capacity"])


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def send_and_leave(url: str, target: str) -> socket.socket:
    """Send a request and keep the socket open without reading: close it to leave."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def status_count(metrics: str, status: int) -> float:
    pattern = rf'imgproxy_http_requests_total\{{[^}}]*route="/img/\{{path\}}"[^}}]*status="{status}"[^}}]*\}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, metrics))


@pytest.mark.server
def test_queued_renders_of_departed_clients_are_dropped(origin: str) -> None:
    with httpx.Client(base_url=origin, timeout=TIMEOUT * 3) as client:
        first: dict[str, httpx.Response] = {}
        busy = threading.Thread(target=lambda: first.update(r=client.get(SLOW.format(w=4000))))
        busy.start()  # holds the only render thread for seconds
        wait_for(lambda: capacity(client)["running"] == 1, "the first render to start")

        leaving = [send_and_leave(origin, SLOW.format(w=w)) for w in (3999, 3998)]
        wait_for(lambda: capacity(client)["queued"] == 2, "two renders to queue")
        assert not capacity(client)["ok"], "the queue is full: not ready"
        for sock in leaving:
            sock.close()
        wait_for(lambda: capacity(client)["queued"] == 0, "the departed clients' renders to leave the queue")
        assert busy.is_alive() and capacity(client)["running"] == 1, "dropped while the thread was still busy"

        # Two new clients fit in the freed queue: without the drop, they would get 503s.
        answers: list[httpx.Response] = []
        late = [threading.Thread(target=lambda w=w: answers.append(client.get(QUICK.format(w=w)))) for w in (200, 201)]
        for thread in late:
            thread.start()
        for thread in [busy, *late]:
            thread.join(TIMEOUT * 3)
        assert sorted(answer.status_code for answer in answers) == [200, 200]
        assert sorted(decode(answer.content).width for answer in answers) == [200, 201]
        assert first["r"].status_code == 200 and decode(first["r"].content).size == (4000, 3000)

        metrics = client.get("/metrics").text
        assert status_count(metrics, 499) == 2, "each departure is counted as 499 (client closed request)"
        assert status_count(metrics, 503) == 0
        # Neither dropped render ran: only the three that were answered left a stage timing.
        assert re.search(r'imgproxy_stage_duration_seconds_count\{stage="encode"\} 3\.0', metrics), metrics


@pytest.mark.server
def test_a_cache_hit_is_answered_to_a_client_that_stays(origin: str) -> None:
    """The watch only covers the wait for a render: a normal request and its repeat are unaffected."""
    with httpx.Client(base_url=origin, timeout=TIMEOUT) as client:
        first = client.get(QUICK.format(w=120))
        again = client.get(QUICK.format(w=120))
    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
    assert first.content == again.content


# --- the parts, in process ---


def test_coalesced_render_survives_one_departure_and_stops_when_all_leave() -> None:
    async def scenario() -> tuple[str, bool, bool]:
        coalescer: Coalescer[str] = Coalescer()
        started, release = asyncio.Event(), asyncio.Event()
        cancelled = False

        async def compute() -> str:
            nonlocal cancelled
            started.set()
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled = True
                raise
            return "done"

        stays = asyncio.ensure_future(coalescer.run("k", compute))
        leaves = asyncio.ensure_future(coalescer.run("k", compute))
        await started.wait()
        leaves.cancel()  # one of two callers leaves: the computation goes on for the other
        await asyncio.sleep(0.01)
        release.set()
        result, joined = await stays
        survived = not cancelled

        release.clear()
        alone = [asyncio.ensure_future(coalescer.run("j", compute)) for _ in range(2)]
        await asyncio.sleep(0.01)
        for task in alone:
            task.cancel()
        await asyncio.sleep(0.01)
        return result, joined, survived and cancelled and coalescer.inflight == 0

    result, joined, stopped = asyncio.run(scenario())
    assert (result, joined) == ("done", False)
    assert stopped, "the computation continued for the caller left, and stopped once both had gone"


def test_limiter_drops_a_cancelled_render_before_it_starts() -> None:
    async def scenario() -> tuple[list[int], int, int]:
        limiter = WorkLimiter(workers=1, max_queue=1, timeout=30)
        ran: list[int] = []
        gate = threading.Event()

        def work(n: int) -> tuple[int, dict[str, float]]:
            if n == 0:
                gate.wait(TIMEOUT)
            ran.append(n)
            return n, {}

        running = asyncio.ensure_future(limiter.run(lambda: work(0)))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(limiter.run(lambda: work(1)))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):  # one running, one queued: full
            await limiter.run(lambda: work(2))
        waiting.cancel()
        await asyncio.sleep(0.05)
        freed = limiter.queued
        accepted = asyncio.ensure_future(limiter.run(lambda: work(3)))  # its place is free again
        gate.set()
        await running
        await accepted
        limiter.shutdown()
        return ran, freed, limiter.running + limiter.queued

    ran, freed, left = asyncio.run(scenario())
    assert ran == [0, 3], "the cancelled render never ran"
    assert (freed, left) == (0, 0)


def test_a_server_repeating_the_request_message_neither_spins_nor_cancels() -> None:
    """Not ASGI (a server must block until the client leaves), but such a receive must not starve the
    event loop or be taken for a disconnect."""
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"", "more_body": False}

    async def work() -> str:
        await asyncio.sleep(0.05)
        return "rendered"

    assert asyncio.run(unless_gone(work(), receive)) == "rendered"
    assert calls == 2
