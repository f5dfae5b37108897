"""A real HTTP origin on 127.0.0.1 (or ::1; ephemeral port), in a background thread, for integration tests.

    from tests.origin import origin_fixture  # noqa: F401   (provides the fixture `origin`)

    def test_x(origin: Origin) -> None:
        origin.url                       # "http://127.0.0.1:PORT/"
        origin.url_for("images/medium.jpg")
        origin.count("/images/medium.jpg"), origin.not_modified["/images/medium.jpg"]
        origin.requests("/images/medium.jpg")[-1]["user-agent"]

Routes (all path based, so they work behind `origin_url` as well as with `?url=`):

    /images/{name}              an image from `files`: ETag, Cache-Control: max-age, Set-Cookie, X-Whatever;
                                304 to a matching If-None-Match
    /jpeg-as-html/{name}        a real image labelled text/html
    /html-as-jpeg               an HTML page labelled image/jpeg
    /status/{code}              that status (404, 500, 503, ...)
    /redirect/{n}/{name}        a chain of exactly n redirects ending at /images/{name}
    /redirect-port/{port}/{p}   a redirect to http://127.0.0.1:{port}/{p}
    /redirect-metadata          a redirect to http://169.254.169.254/latest/meta-data
    /redirect-foreign/{p}       a redirect to http://localhost:{this port}/{p}: same server, another host name
    /redirect-to?to={url}       a redirect to any URL
    /custom/{name}?header=N: v  an image from `files` with exactly the headers given (repeatable), no Date
    /truncated/{name}           half an image, then the connection closes short of its Content-Length
    /oversized                  Content-Length: 1 GB, then no body at all until the client goes away
    /endless                    a JPEG signature, then zeros forever (close-delimited)
    /gzip-bomb                  Content-Encoding: gzip, a small body that inflates to `bomb_bytes`
    /slow/{name}                an image dripped one byte per 0.2 s
    /hang                       reads the request, never answers
    /dated/{name}               an image from `files` with Last-Modified only (no ETag), max-age=0;
                                304 to a matching If-Modified-Since
    /unconditional-304/{name}   304 Not Modified whatever the request

Every request is counted by path (query excluded) and its headers are recorded. Handlers that wait or
stream watch a stop event, so the fixture's shutdown joins every thread and closes every socket.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import http.server
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"  # ../shared beside the repo
REPO_IMAGES = Path(__file__).parent / "images"
SAMPLES = Path(__file__).parent.parent / "imgproxy" / "samples"
METADATA_URL = "http://169.254.169.254/latest/meta-data"
HTML = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
DRIP_INTERVAL = 0.2
MAX_WAIT = 30.0  # no handler outlives this, whatever the client does


def _first_existing(*paths: Path) -> bytes:
    for path in paths:
        if path.is_file():
            return path.read_bytes()
    raise FileNotFoundError(paths[0])


def corpus_files() -> dict[str, bytes]:
    """The images the origin serves under /images/: the shared corpus, or the repository's own images."""
    return {
        "medium.jpg": _first_existing(CORPUS / "medium.jpg", REPO_IMAGES / "Landscape_1.jpg"),
        "big.jpg": _first_existing(CORPUS / "big.jpg", REPO_IMAGES / "Landscape_2.jpg"),
        "chelsea.png": _first_existing(CORPUS / "small" / "chelsea.png", SAMPLES / "chelsea.png"),
        "landscape.jpg": _first_existing(REPO_IMAGES / "Landscape_3.jpg", SAMPLES / "landscape.jpg"),
    }


def _next_hop(rest: str) -> str:
    """/redirect/{n}/{name}: n redirects in all, the last one to /images/{name}."""
    count, _, name = rest.partition("/")
    hops = int(count)
    return f"/redirect/{hops - 1}/{name}" if hops > 1 else f"/images/{name}"


def etag_for(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread
    origin: Origin

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-response are part of the tests, not errors worth a traceback."""


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "OriginTest/1.0"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads
    timeout = 10  # socket timeout for reads and writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- plumbing ---

    @property
    def origin(self) -> Origin:
        return self.server.origin

    def _start(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self._start(status, {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})})
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(302, b"", "text/plain", {"Location": location})

    def _wait_until_client_leaves(self) -> None:
        """Block (without answering more) until the client closes, the origin stops, or MAX_WAIT passes."""
        deadline = time.monotonic() + MAX_WAIT
        while not self.origin.stopping.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                try:
                    if not self.connection.recv(4096):
                        return
                except OSError:
                    return

    # --- routes ---

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)  # counted and routed percent-decoded: "/images/a b.jpg"
        self.origin.record(path, {k.lower(): v for k, v in self.headers.items()})
        head, _, rest = path.lstrip("/").partition("/")
        route = self._routes().get(head)
        try:
            if route is None:
                self._send(404, b"no such route", "text/plain")
            else:
                route(path, rest, parse_qs(parts.query))
        except KeyError:
            self._send(404, b"no such image", "text/plain")
        except (ConnectionError, TimeoutError):
            pass  # the client went away: expected for the misbehaving routes

    def _routes(self) -> dict[str, Callable[[str, str, dict[str, list[str]]], None]]:
        files, port = self.origin.files, self.origin.port
        return {
            "images": lambda path, name, _: self._image(path, name),
            "jpeg-as-html": lambda _, name, __: self._send(200, files[name], "text/html; charset=utf-8"),
            "html-as-jpeg": lambda *_: self._send(200, HTML, "image/jpeg"),
            "status": lambda _, code, __: self._send(int(code), f"status {code}".encode(), "text/plain"),
            "redirect": lambda _, rest, __: self._redirect(_next_hop(rest)),
            "redirect-port": lambda _, rest, __: self._redirect("http://127.0.0.1:{}/{}".format(*rest.split("/", 1))),
            "redirect-metadata": lambda *_: self._redirect(METADATA_URL),
            "redirect-foreign": lambda _, rest, __: self._redirect(f"http://localhost:{port}/{rest}"),
            "redirect-to": lambda _, __, query: self._redirect(query["to"][0]),
            "oversized": lambda *_: self._oversized(),
            "truncated": lambda _, name, __: self._truncated(name),
            "endless": lambda *_: self._endless(),
            "gzip-bomb": lambda *_: self._gzip_bomb(),
            "slow": lambda _, name, __: self._drip(files[name]),
            "hang": lambda *_: self._wait_until_client_leaves(),
            "dated": lambda path, name, _: self._dated(path, name),
            "custom": lambda _, name, query: self._custom(name, query),
            "unconditional-304": lambda _, name, __: self._start(304, {"ETag": etag_for(files[name])}),
        }

    def _image(self, path: str, name: str) -> None:
        data = self.origin.files[name]
        etag = etag_for(data)
        headers = {
            "ETag": etag,
            "Cache-Control": f"public, max-age={self.origin.max_age}",
            "Set-Cookie": "session=origin-secret; Path=/; HttpOnly",
            "X-Whatever": "origin-internal",
        }
        candidates = [tag.strip() for tag in self.headers.get("If-None-Match", "").split(",")]
        if etag in candidates or "*" in candidates:
            self.origin.count_304(path)
            self._start(304, headers)
            return
        self._send(200, data, "image/png" if name.endswith(".png") else "image/jpeg", headers)

    def _dated(self, path: str, name: str) -> None:
        """Last-Modified as the only validator (no ETag): 304 to a matching If-Modified-Since."""
        data = self.origin.files[name]
        headers = {"Last-Modified": self.origin.last_modified(name), "Cache-Control": "max-age=0"}
        if self.headers.get("If-Modified-Since") == headers["Last-Modified"]:
            self.origin.count_304(path)
            self._start(304, headers)
            return
        self._send(200, data, "image/png" if name.endswith(".png") else "image/jpeg", headers)

    def _custom(self, name: str, query: dict[str, list[str]]) -> None:
        """An image from `files` with the headers given as `?header=Name: value` (repeatable), and no others
        but Content-Type and Content-Length (not even Date or Server)."""
        data = self.origin.files[name]
        self.send_response_only(200)  # no automatic Date: a test may want none, or a bad one
        for item in query.get("header", []):
            self.send_header(*item.split(": ", 1))
        self.send_header("Content-Type", "image/png" if name.endswith(".png") else "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _truncated(self, name: str) -> None:
        data = self.origin.files[name]
        self._start(200, {"Content-Type": "image/jpeg", "Content-Length": str(len(data))})
        self.wfile.write(data[: len(data) // 2])

    def _oversized(self) -> None:
        self._start(200, {"Content-Type": "image/jpeg", "Content-Length": str(10**9)})
        self.wfile.flush()
        self._wait_until_client_leaves()

    def _gzip_bomb(self) -> None:
        body = gzip.compress(b"\xff\xd8\xff\xe0" + bytes(self.origin.bomb_bytes), compresslevel=9)
        self._send(200, body, "image/jpeg", {"Content-Encoding": "gzip"})

    def _endless(self) -> None:
        self._start(200, {"Content-Type": "image/jpeg"})
        self.wfile.write(b"\xff\xd8\xff\xe0")
        chunk = bytes(64 * 1024)
        deadline = time.monotonic() + MAX_WAIT
        while not self.origin.stopping.is_set() and time.monotonic() < deadline:
            self.wfile.write(chunk)  # raises once the client has hung up

    def _drip(self, data: bytes) -> None:
        self._start(200, {"Content-Type": "image/jpeg", "Content-Length": str(len(data))})
        self.wfile.flush()
        deadline = time.monotonic() + MAX_WAIT
        for index in range(len(data)):
            if self.origin.stopping.wait(DRIP_INTERVAL) or time.monotonic() > deadline:
                return
            self.wfile.write(data[index : index + 1])
            self.wfile.flush()


class Origin:
    """A running origin server; see the module docstring for its routes."""

    def __init__(self, files: dict[str, bytes] | None = None, max_age: int = 60, host: str = "127.0.0.1") -> None:
        self.files: dict[str, bytes] = dict(files if files is not None else corpus_files())
        self.max_age = max_age
        self.bomb_bytes = 16 * 1024 * 1024
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.not_modified: Counter[str] = Counter()
        self._requests: dict[str, list[dict[str, str]]] = {}
        self._modified: dict[str, int] = {}
        self._server = (_Server6 if ":" in host else _Server)((host, 0), _Handler)
        self._server.origin = self
        self.host = host
        self.port: int = self._server.server_address[1]
        self.url = self.url_for("")
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def url_for(self, path: str, host: str | None = None) -> str:
        """An absolute URL of `path` on this server, optionally spelt with another host name."""
        host = host or self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/{path.lstrip('/')}"

    # --- what the origin saw ---

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self._counts[path] += 1
            self._requests.setdefault(path, []).append(headers)

    def count_304(self, path: str) -> None:
        with self._lock:
            self.not_modified[path] += 1

    def count(self, path: str | None = None) -> int:
        """Requests to `path` ("/images/a.jpg"), or to every path."""
        with self._lock:
            return sum(self._counts.values()) if path is None else self._counts["/" + path.lstrip("/")]

    def requests(self, path: str) -> list[dict[str, str]]:
        """The headers (lower-case names) of every request to `path`, in order."""
        with self._lock:
            return list(self._requests.get("/" + path.lstrip("/"), []))

    def all_requests(self) -> list[dict[str, str]]:
        with self._lock:
            return [headers for requests in self._requests.values() for headers in requests]

    # --- lifecycle ---

    def set_file(self, name: str, data: bytes) -> None:
        """Change what /images/{name} serves (and so its ETag and Last-Modified)."""
        with self._lock:
            self.files[name] = data
            self._modified[name] = self._modified.get(name, 0) + 1

    def last_modified(self, name: str) -> str:
        """An HTTP date that moves forward a day each time `name` is changed."""
        with self._lock:
            changes = self._modified.get(name, 0)
        return email.utils.formatdate(1_700_000_000 + 86_400 * changes, usegmt=True)

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()  # joins the handler threads
        self._thread.join(timeout=10)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(name="origin")
def origin_fixture() -> Iterator[Origin]:
    """A fresh origin per test (fresh counters), always shut down."""
    server = Origin()
    try:
        yield server
    finally:
        server.close()


__all__ = ["METADATA_URL", "Origin", "closed_port", "corpus_files", "etag_for", "origin_fixture"]
