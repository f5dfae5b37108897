"""Against a real uvicorn server on an ephemeral port: what the HTTP wire carries, and start-up itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from imgproxy.app import create_app
from imgproxy.settings import Settings
from tests.conftest import decode, free_port, serving

pytestmark = pytest.mark.server

TIMEOUT = 10.0  # seconds: every wait in this file is bounded by it


@dataclass(frozen=True)
class Wire:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Live:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def raw(self, method: str, target: str, headers: dict[str, str] | None = None) -> Wire:
        """Send one request line exactly as written (no client-side normalisation), read to EOF."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        with socket.create_connection((self.host, self.port), timeout=TIMEOUT) as sock:
            sock.sendall(request)
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            parsed[name.strip().lower()] = value.strip()
        return Wire(int(status_line.split()[1]), parsed, body)


@pytest.fixture(scope="module")
def live(source_root: Path) -> Iterator[Live]:
    """The real app in a real uvicorn, in a thread, on a port the OS picked; always stopped afterwards."""
    settings = Settings(_env_file=None, source={"local_root": source_root}, limits={"workers": 2})
    with serving(create_app(settings), timeout=TIMEOUT, access_log=False, server_header=False) as origin:
        yield Live("127.0.0.1", int(origin.rsplit(":", 1)[1]))


@pytest.fixture
def http(live: Live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=TIMEOUT) as client:
        yield client


def test_get_returns_a_decodable_image(http: httpx.Client) -> None:
    response = http.get("/img/chelsea.png?w=120", headers={"Accept": "image/webp"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/webp"
    assert "accept" in {token.strip().lower() for token in response.headers["vary"].split(",")}
    assert response.headers["x-content-type-options"] == "nosniff"
    image = decode(response.content)
    assert (image.format, image.size) == ("WEBP", (120, 80))  # 451x300 → 79.8 rounded


def test_content_length_and_no_chunking_on_the_wire(live: Live) -> None:
    for target in ("/img/coffee.png?w=90&fm=png", "/img/coffee.png?w=90&fm=png"):  # a miss, then a hit
        wire = live.raw("GET", target)
        assert wire.status == 200
        assert "transfer-encoding" not in wire.headers
        assert int(wire.headers["content-length"]) == len(wire.body)
        assert decode(wire.body).size == (90, 60)
    assert live.raw("GET", "/img/coffee.png?w=90&fm=png").headers["x-cache"] == "HIT"


def test_head_has_content_length_and_no_body(live: Live) -> None:
    target = "/img/astronaut.png?w=64&fm=jpeg"
    head = live.raw("HEAD", target)  # cold: this HEAD renders
    get = live.raw("GET", target)
    assert head.status == 200
    assert head.body == b""
    assert int(head.headers["content-length"]) == len(get.body) > 0
    assert head.headers["content-type"] == get.headers["content-type"] == "image/jpeg"
    assert head.headers["etag"] == get.headers["etag"]
    assert "transfer-encoding" not in head.headers


def test_head_healthz(live: Live) -> None:
    wire = live.raw("HEAD", "/healthz")
    assert wire.status == 200
    assert wire.body == b""
    assert live.raw("GET", "/healthz").body == b'{"status":"ok"}'


def test_conditional_get_is_304(http: httpx.Client) -> None:
    first = http.get("/img/landscape.jpg?w=80&fm=jpeg")
    assert first.status_code == 200
    assert decode(first.content).size == (80, 53)  # upright 1800x1200 (EXIF 6) → 53.3
    response = http.get("/img/landscape.jpg?w=80&fm=jpeg", headers={"If-None-Match": f"W/{first.headers['etag']}"})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == first.headers["etag"]
    assert response.headers["cache-control"] == first.headers["cache-control"]


def test_bad_parameter_is_a_400_problem(http: httpx.Client) -> None:
    response = http.get("/img/chelsea.png?w=abc")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == 400
    assert body["param"] == "w"


@pytest.mark.parametrize(
    "target",
    [
        "/img/../../../../../../etc/passwd",
        "/img/sub/../chelsea.png",
        "/img/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/img/..%2f..%2f..%2fetc%2fpasswd",
        "/img//etc/passwd",
        "/img/..\\..\\etc\\passwd",
        "/img/chelsea.png%00.jpg",
    ],
)
def test_escaping_request_lines_are_404(live: Live, target: str) -> None:
    wire = live.raw("GET", target)
    assert wire.status == 404
    assert wire.headers["content-type"] == "application/problem+json"
    assert b"root:" not in wire.body


# --- the `imgproxy serve` command ---------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("IMGPROXY_")}
    return {**env, **extra}


@pytest.mark.parametrize(
    ("variable", "value"),
    [("IMGPROXY_CACHE__MAX_BYTE", "1000"), ("IMGPROXY_LIMITS__WORKER", "2"), ("IMGPROXY_PASSTHROUGH", "true")],
)
def test_serve_refuses_a_misspelt_variable(tmp_path: Path, variable: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imgproxy", "serve", "--port", str(free_port())],
        env=clean_env(**{variable: value}),
        cwd=tmp_path,  # no .env here
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert variable in result.stderr
    assert "Uvicorn running" not in result.stderr


def test_serve_refuses_a_misspelt_name_in_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IMGPROXY_CACHE__MAX_BYTE=1000\n")
    result = subprocess.run(
        [sys.executable, "-m", "imgproxy", "serve", "--port", str(free_port())],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "IMGPROXY_CACHE__MAX_BYTE" in result.stderr


def test_serve_runs_and_stops(tmp_path: Path, source_root: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "imgproxy", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=clean_env(IMGPROXY_SOURCE__LOCAL_ROOT=str(source_root), IMGPROXY_LIMITS__WORKERS="1"),
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as client:
                deadline = time.monotonic() + 20
                while True:
                    assert process.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, "imgproxy serve did not start listening in time"
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                response = client.get("/img/sub/nested.png?fm=png")
                assert response.status_code == 200
                assert response.headers["content-type"] == "image/png"
                assert decode(response.content).size == (20, 10)
                assert "server" not in response.headers  # server_header=False
        finally:
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - only when shutdown hangs
                process.kill()
                process.wait(TIMEOUT)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught: -15 is a clean stop as well
    assert process.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
