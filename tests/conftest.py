"""Shared fixtures: a source root with real and generated images, the app, and HTTP clients."""

from __future__ import annotations

import io
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image
from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.settings import SAMPLES_DIR, Settings

IMAGES = Path(__file__).parent / "images"


@pytest.fixture(scope="session")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled samples, the orientation set, and generated edge cases, in one root."""
    root = tmp_path_factory.mktemp("root")
    for path in [*SAMPLES_DIR.glob("*.png"), *SAMPLES_DIR.glob("*.jpg"), *IMAGES.glob("*.jpg")]:
        shutil.copy(path, root / path.name)
    make_edge_cases(root)
    return root


def make_edge_cases(root: Path) -> None:
    """Sources in the modes and shapes that trip naive pipelines."""
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(root / "cmyk.jpg")  # pure red in CMYK
    grey16 = Image.new("I;16", (40, 30))
    grey16.putdata([60000] * (40 * 30))
    grey16.save(root / "grey16.png")
    palette = Image.new("P", (50, 50), 0)
    palette.putpalette([255, 0, 255] + [0, 128, 0] * 255)  # index 0 is magenta: the transparent key
    palette.paste(1, (10, 10, 40, 40))
    palette.save(root / "palette_trns.png", transparency=0)
    Image.new("RGBA", (80, 60), (0, 0, 255, 0)).save(root / "transparent.png")
    Image.new("LA", (32, 32), (100, 128)).save(root / "grey_alpha.png")
    Image.new("RGB", (100, 50), (200, 10, 10)).save(root / "wide.png")
    full = io.BytesIO()
    Image.new("RGB", (400, 300), (10, 200, 10)).save(full, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "not_an_image.jpg").write_bytes(b"<html><script>alert(1)</script></html>")
    (root / "sub").mkdir()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(root / "sub" / "nested.png")


@pytest.fixture
def make_settings(source_root: Path) -> Callable[..., Settings]:
    def build(**groups: Any) -> Settings:
        groups.setdefault("log", {"level": "warning"})  # no access line per request in test output
        groups.setdefault("source", {})
        groups["source"] = {"local_root": source_root, **groups["source"]}
        return Settings(_env_file=None, **groups)

    return build


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(**groups: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**groups)))
        client.__enter__()  # runs the lifespan
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def app(make_settings: Callable[..., Settings]) -> FastAPI:
    return create_app(make_settings())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def decode(content: bytes) -> Image.Image:
    """Decode a response body fully, so a truncated or lying body fails the test."""
    image = Image.open(io.BytesIO(content))
    image.load()
    return image


def assert_problem(response: Any, status: int, param: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem document with this status: never cached, never sniffed, never a cache hit."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "etag" not in response.headers and "x-cache" not in response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if param is not None:
        assert body["param"] == param, body
    return body


@contextmanager
def serving(app: Any, timeout: float = 15.0, **config: Any) -> Iterator[str]:
    """`app` in a real uvicorn, in a thread, on a port the OS picked; yields its origin; always stopped."""
    options = {"host": "127.0.0.1", "port": 0, "lifespan": "on", "ws": "none", "log_level": "warning", **config}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, name="uvicorn-under-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            assert thread.is_alive(), "the server thread ended before it started serving"
            assert time.monotonic() < deadline, "the server did not start in time"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():  # only when shutdown hangs
            server.force_exit = True
            thread.join(timeout)
        assert not thread.is_alive()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a server started as a subprocess."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
