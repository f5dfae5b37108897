"""Abuse over HTTP: SSRF, cache-busting floods, a thousand concurrent requests, slow and huge origins.

Every test here runs under `network_jail`: a connection to anything but loopback fails the test (and is
never made), and host names resolve only from a fixed table (`localhost`, `localhost.localdomain`,
`ip6-localhost`, `ip6-loopback`) or as numeric literals, so no DNS query leaves the machine. That is also
how "refused before connecting" is proved: the service never even tries.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient

import imgproxy.sources.address
from imgproxy.app import create_app
from imgproxy.settings import Settings
from tests.conftest import serving
from tests.hostile import report, rss_kib
from tests.origin import Origin, origin_fixture  # noqa: F401  (the `origin` fixture)

PROBLEM = "application/problem+json"
MakeClient = Callable[..., TestClient]
FAKE_HOSTS = {  # what /etc/hosts says on a typical Debian machine
    "localhost": ["127.0.0.1", "::1"],
    "localhost.localdomain": ["127.0.0.1"],
    "ip6-localhost": ["::1"],
    "ip6-loopback": ["::1"],
}


class Jail:
    """Records every outgoing connection and name lookup the process attempts."""

    def __init__(self) -> None:
        self.refused: list[Any] = []
        self.lookups: list[str] = []
        self.checked = False  # the test asserts on `refused` itself (a strict xfail must fail in its body)

    def assert_no_escape(self) -> None:
        self.checked = True
        assert self.refused == [], f"the service tried to connect outside loopback: {self.refused}"


def is_loopback(address: Any) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if not isinstance(host, str):
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def network_jail(monkeypatch: pytest.MonkeyPatch) -> Iterator[Jail]:
    jail = Jail()
    real_getaddrinfo = socket.getaddrinfo
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(  # noqa: PLR0917  (socket.getaddrinfo's own signature)
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is None:
            return real_getaddrinfo(host, port, family, type, proto, flags)
        jail.lookups.append(name)
        key = name.lower().rstrip(".")
        if key in FAKE_HOSTS:
            return [
                info
                for literal in FAKE_HOSTS[key]
                for info in real_getaddrinfo(literal, port, family, type, proto, flags | socket.AI_NUMERICHOST)
            ]
        try:
            return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: no DNS in these tests") from None

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address):
            jail.refused.append(address)
            raise ConnectionRefusedError(f"network jail: {address} is not loopback")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address):
            jail.refused.append(address)
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield jail
    if not jail.checked:
        jail.assert_no_escape()


def assert_problem(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["cache-control"] == "no-store"


def remote(url: str, **params: object) -> str:
    extra = "".join(f"&{name}={value}" for name, value in params.items())
    return f"/img?url={quote(url, safe='')}{extra}"


# --- SSRF ---------------------------------------------------------------------------------------------------

PRIVATE_V4 = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",  # "this host": Linux dials loopback
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "192.168.255.254",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "100.64.0.1",  # carrier-grade NAT (shared)
    "100.127.255.254",
    "192.0.0.1",  # IETF protocol assignments
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",  # broadcast
]
PRIVATE_V6 = [
    "[::1]",
    "[::]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[::ffff:10.0.0.1]",
    "[::127.0.0.1]",  # IPv4-compatible (deprecated)
    "[64:ff9b::7f00:1]",  # NAT64 of loopback
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of the metadata address
    "[2002:7f00:1::1]",  # 6to4 of loopback
    "[2002:a9fe:a9fe::1]",  # 6to4 of the metadata address
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo carrying 127.0.0.1
    "[fe80::1]",  # link-local
    "[fc00::1]",  # unique local
    "[fd00:ec2::254]",  # the EC2 metadata service over IPv6
    "[ff02::1]",  # multicast
    "[2001:db8::1]",  # documentation
    "[100::1]",  # discard
]
NUMERIC_TRICKS = [
    "2130706433",  # 127.0.0.1 as one decimal number
    "0x7f000001",
    "017700000001",  # octal
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f.1",
    "127.1",
    "127.0.1",
    "0",
    "0x0",
    "167772161",  # 10.0.0.1
    "012.0.0.1",
    "10.1",
    "3232235777",  # 192.168.1.1
    "0xc0.0xa8.1.1",
    "2852039166",  # 169.254.169.254
    "0xa9fea9fe",
    "0251.0376.0251.0376",
    "0xa9.0xfe.0xa9.0xfe",
    "169.254.43518",
]
LOOPBACK_NAMES = ["localhost", "LOCALHOST.", "localhost.localdomain", "ip6-localhost", "ip6-loopback"]
SSRF_HOSTS = [*PRIVATE_V4, *PRIVATE_V6, *NUMERIC_TRICKS, *LOOPBACK_NAMES]


@pytest.fixture
def open_client(make_client: MakeClient) -> TestClient:
    """Remote URLs on with every host allowed: only the address rules stand in the way (the defaults)."""
    return make_client(source={"allowed_hosts": ["*"], "timeout": 3})


@pytest.mark.parametrize("host", SSRF_HOSTS)
def test_ssrf_private_targets_are_refused_before_connecting(
    open_client: TestClient, origin: Origin, network_jail: Jail, host: str
) -> None:
    url = f"http://{host}:{origin.port}/images/medium.jpg"
    started = time.monotonic()
    response = open_client.get(remote(url, w=40))
    network_jail.assert_no_escape()
    # httpx refuses some numeric spellings (leading-zero octets) as URLs: a 400, never fetched either
    assert_problem(response, *((400, 403) if host in NUMERIC_TRICKS else (403,)))
    assert time.monotonic() - started < 2.0
    assert origin.count() == 0  # the loopback spellings never reached the origin either


# Not globally reachable (IANA special-purpose registries), yet `ipaddress` of Python 3.11.7 (this venv)
# calls them global: its tables predate the 2024 fixes (3.12.4 / 3.11.10) or never had them. The service
# used to connect to them (B6 in SECURITY.md); `address.is_public` now has its own list.
NOT_GLOBAL_BUT_ALLOWED = [
    "192.0.0.8",  # 192.0.0.0/24 IETF protocol assignments (only /29 and .170/31 are in 3.11.7's table)
    "192.0.0.254",
    "[fec0::1]",  # fec0::/10 site-local (deprecated, still routed inside some networks)
    "[3fff::1]",  # 3fff::/20 documentation (RFC 9637)
]


@pytest.mark.parametrize("host", NOT_GLOBAL_BUT_ALLOWED)
def test_ssrf_ranges_missing_from_old_ipaddress_tables_are_refused(
    open_client: TestClient, origin: Origin, network_jail: Jail, host: str
) -> None:
    response = open_client.get(remote(f"http://{host}:{origin.port}/images/medium.jpg", w=40))
    network_jail.assert_no_escape()  # before the fix: a connection attempt (stopped by the jail), then a 502
    assert_problem(response, 403)


@pytest.mark.parametrize(
    "url",
    [
        "HTTP://127.0.0.1:{port}/images/medium.jpg",
        "http://user:pass@127.0.0.1:{port}/images/medium.jpg",
        "http://localhost@127.0.0.1:{port}/images/medium.jpg",
        "http://127.0.0.1:{port}#@localhost.example/images/medium.jpg",
        "http://127.0.0.1.:{port}/images/medium.jpg",
        "http://[::1]:{port}/images/medium.jpg",
        "http://[::ffff:127.0.0.1]:{port}/images/medium.jpg",
        "http://%31%32%37.0.0.1:{port}/images/medium.jpg",
        "http:/127.0.0.1:{port}/images/medium.jpg",
        "http:\\\\127.0.0.1:{port}/images/medium.jpg",
        "//127.0.0.1:{port}/images/medium.jpg",
        "https://127.0.0.1:{port}/images/medium.jpg",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{port}/_GET",
        "ftp://127.0.0.1/x.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "http://127.0.0.1:{port}%2f@example.invalid/x.jpg",
        "http://[fe80::1%25lo]:{port}/images/medium.jpg",
    ],
)
def test_ssrf_url_spellings_are_refused(open_client: TestClient, origin: Origin, url: str) -> None:
    response = open_client.get(remote(url.format(port=origin.port), w=40))
    assert_problem(response, 400, 403, 502)  # refused, or not even a URL: never fetched
    assert origin.count() == 0


def test_every_refusal_is_a_problem_document_and_never_cached(open_client: TestClient, origin: Origin) -> None:
    url = remote(f"http://2130706433:{origin.port}/images/medium.jpg", w=40)
    for _ in range(3):
        response = open_client.get(url)
        assert_problem(response, 403)
        assert "x-cache" not in response.headers
    assert origin.count() == 0


@pytest.fixture
def loopback_client(make_client: MakeClient, origin: Origin) -> TestClient:
    """Private addresses allowed (an origin on our own network) but only this origin's host:port on the
    allow-list: a redirect anywhere else must fail the allow-list on its hop."""
    return make_client(
        source={"allowed_hosts": [f"127.0.0.1:{origin.port}"], "allow_private_addresses": True, "timeout": 3}
    )


@pytest.mark.parametrize(
    "target",
    [
        "http://localhost:{port}/images/medium.jpg",
        "http://127.0.0.2:{port}/images/medium.jpg",
        "http://2130706433:{port}/images/medium.jpg",
        "http://[::1]:{port}/images/medium.jpg",
        "http://0.0.0.0:{port}/images/medium.jpg",
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00:ec2::254]/latest/meta-data",
        "http://10.0.0.1/x.jpg",
        "http://192.168.1.1/x.jpg",
        "http://127.0.0.1:1/x.jpg",  # the right host, another port
        "file:///etc/passwd",
    ],
)
def test_ssrf_redirects_to_private_targets_are_refused(
    loopback_client: TestClient, origin: Origin, target: str
) -> None:
    hop = origin.url_for("redirect-to?to=" + quote(target.format(port=origin.port), safe=""))
    assert_problem(loopback_client.get(remote(hop, w=40)), 403)
    assert origin.count("/redirect-to") == 1
    assert origin.count("/images/medium.jpg") == 0  # the second hop was never made


def test_ssrf_redirect_checks_addresses_on_every_hop(
    make_client: MakeClient, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every host allowed and private addresses refused, the origin treated as a public host: a redirect
    into any private range is refused by the address rule alone, before connecting."""
    is_public = imgproxy.sources.address.is_public
    origin_address = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(imgproxy.sources.address, "is_public", lambda a: a == origin_address or is_public(a))
    client = make_client(source={"allowed_hosts": ["*"], "timeout": 3})
    assert client.get(remote(origin.url_for("images/chelsea.png"), w=30)).status_code == 200
    hosts = [  # none of them is, or embeds, 127.0.0.1 itself: the address let through
        "127.0.0.2",
        "0.0.0.0",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "[::1]",
        "[::ffff:169.254.169.254]",
        "[64:ff9b::a9fe:a9fe]",
        "[2002:a9fe:a9fe::1]",
        "[fe80::1]",
        "[fc00::1]",
        "[fd00:ec2::254]",
        "167772161",
        "2852039166",
        "0xa9fea9fe",
        "ip6-localhost",
    ]
    for host in hosts:
        target = f"http://{host}:{origin.port}/images/medium.jpg"
        response = client.get(remote(origin.url_for("redirect-to?to=" + quote(target, safe="")), w=40))
        assert_problem(response, 403)
    assert origin.count("/images/medium.jpg") == 0


# --- cache-busting floods --------------------------------------------------------------------------------------


def test_cache_flood_of_distinct_widths_stays_within_the_budget(make_client: MakeClient, tmp_path: Path) -> None:
    budget = 150_000
    Image.effect_noise((96, 64), 64).convert("RGB").save(tmp_path / "noise.png")  # outputs of real size
    client = make_client(source={"local_root": tmp_path}, cache={"max_bytes": budget}, limits={"max_queue": 64})
    service = client.app.state.service  # type: ignore[attr-defined]
    before = rss_kib()
    held = []
    for width in range(1, 301):
        response = client.get(f"/img/noise.png?w={width}&fm=jpeg&enlarge=1")
        assert response.status_code == 200
        held.append(service.cache.bytes_held)
        assert service.cache.bytes_held <= budget
    assert service.cache.evictions > 0
    assert len(set(held)) > 10  # the cache really filled and churned
    grown = (rss_kib() - before) / 1024
    report(
        "cache-flood",
        requests=300,
        budget=budget,
        max_bytes_held=max(held),
        evictions=service.cache.evictions,
        rss_growth_mib=round(grown, 1),
    )
    assert grown < 200  # MiB: results live only in the bounded cache


def test_source_cache_flood_stays_within_its_budget(make_client: MakeClient, origin: Origin) -> None:
    budget = 2 * 1024 * 1024  # medium.jpg is 866 KB: two fit
    client = make_client(
        source={"allowed_hosts": [f"127.0.0.1:{origin.port}"], "allow_private_addresses": True, "cache_bytes": budget}
    )
    source = client.app.state.service.url_source  # type: ignore[attr-defined]
    for n in range(20):
        url = origin.url_for(f"images/medium.jpg?v={n}")
        assert client.get(remote(url, w=16)).status_code == 200
        assert source.cache.bytes_held <= budget
    assert len(source.cache) <= 2


# --- slow and huge origins --------------------------------------------------------------------------------------


@pytest.fixture
def origin_client(make_client: MakeClient, origin: Origin) -> Callable[..., TestClient]:
    def build(**source: object) -> TestClient:
        return make_client(
            source={"origin_url": origin.url, "allow_private_addresses": True, **source},
            limits={"max_source_bytes": 2 * 1024 * 1024},  # the origin's bombs are 16 MB and more
        )

    return build


@pytest.mark.parametrize(("path", "timeout"), [("slow/medium.jpg", 1.0), ("hang", 1.0)])
def test_slow_origins_time_out_within_the_deadline(
    origin_client: Callable[..., TestClient], origin: Origin, path: str, timeout: float
) -> None:
    client = origin_client(timeout=timeout)
    for attempt in (1, 2):  # the failure is not cached: the origin is asked again
        started = time.monotonic()
        assert_problem(client.get(f"/img/{path}?w=40"), 504)
        assert time.monotonic() - started < timeout + 1.0
        assert origin.count("/" + path) == attempt


@pytest.mark.parametrize("path", ["endless", "oversized", "gzip-bomb"])
def test_huge_origins_are_cut_at_the_byte_budget(
    origin_client: Callable[..., TestClient], origin: Origin, path: str
) -> None:
    client = origin_client(timeout=10)
    before = rss_kib()
    started = time.monotonic()
    assert_problem(client.get(f"/img/{path}?w=40"), 413)
    assert time.monotonic() - started < 5.0
    assert (rss_kib() - before) / 1024 < 64  # MiB: the body was cut, not buffered


# --- a thousand concurrent requests against a real server -----------------------------------------------------


def photo(root: Path) -> None:
    """A 1600x1200 photo-like JPEG: each render takes real time, so the queue fills."""
    image = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    image.paste((180, 40, 40), (400, 300, 1200, 900))
    image.save(root / "load.jpg", quality=90)


async def flood(base: str, count: int) -> tuple[list[tuple[int, dict[str, str], bytes, float]], float]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def one(index: int) -> tuple[int, dict[str, str], bytes, float]:
            started = time.perf_counter()
            response = await client.get(f"/img/load.jpg?w={100 + index}&fm=jpeg")
            return response.status_code, dict(response.headers), response.content, time.perf_counter() - started

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(count)))
        return list(results), time.perf_counter() - started


@pytest.mark.slow
def test_a_thousand_concurrent_requests(tmp_path: Path) -> None:
    photo(tmp_path)
    settings = Settings(
        _env_file=None,
        source={"local_root": tmp_path},
        limits={"workers": 2, "max_queue": 8, "render_timeout": 10},
        log={"level": "error"},
    )
    app = create_app(settings)
    limiter = app.state.service.limiter
    with serving(app, log_level="error", access_log=False, backlog=2048, limit_concurrency=None) as base:
        before = rss_kib()
        peak = [before]
        waiting = [0]  # renders waiting for a worker, sampled: the queue must never pass max_queue
        running = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak.append(rss_kib())
                waiting.append(limiter.queued)
                running.append(limiter.running)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            results, elapsed = asyncio.run(flood(base, 1000))
        finally:
            stop.set()
            sampler.join(5)
        statuses = Counter(status for status, _, _, _ in results)
        assert statuses[500] == 0
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0 and statuses[200] > 0
        for status, headers, body, _ in results:
            if status == 503:
                assert headers["retry-after"].isdigit()
                assert headers["content-type"] == PROBLEM
            else:
                decoded = Image.open(io.BytesIO(body))
                decoded.load()
                assert decoded.format == "JPEG"
        refused = sorted(seconds for status, _, _, seconds in results if status == 503)
        assert max(waiting) <= 8 and max(running) <= 2
        health = httpx.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        again = httpx.get(f"{base}/img/load.jpg?w=64&fm=jpeg", timeout=30)
        assert again.status_code == 200
        grown = (max(peak) - before) / 1024
        report(
            "concurrency",
            requests=len(results),
            statuses=dict(statuses),
            seconds=round(elapsed, 2),
            median_503_s=round(refused[len(refused) // 2], 3),
            max_waiting=max(waiting),
            max_running=max(running),
            rss_before_mib=round(before / 1024, 1),
            rss_peak_mib=round(max(peak) / 1024, 1),
            rss_growth_mib=round(grown, 1),
        )
        assert grown < 512  # MiB, client and server together in this process
