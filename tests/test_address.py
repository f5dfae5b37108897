"""Origin address safety: which addresses are public, the host allow-list, resolution of odd spellings of
loopback, and the same rules through GET /img?url=."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

import pytest
from starlette.testclient import TestClient

from imgproxy.app import create_app
from imgproxy.errors import Forbidden, OriginUnreachable
from imgproxy.settings import Settings
from imgproxy.sources.address import host_allowed, is_public, resolve
from tests.conftest import assert_problem

MakeClient = Callable[..., TestClient]


# --- is_public ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2001:4860:4860::8888"])
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address)) is True


@pytest.mark.parametrize(
    "address",
    [
        # loopback
        "127.0.0.1",
        "127.255.255.254",
        "::1",
        # RFC 1918
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.0.1",
        "192.168.255.255",
        # RFC 4193 unique local
        "fc00::1",
        "fd12:3456:789a::1",
        # link-local, cloud metadata
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        # multicast
        "224.0.0.1",
        "239.255.255.250",
        "ff02::1",
        "ff0e::1",
        # reserved, unspecified, broadcast
        "240.0.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "255.255.255.255",
        # shared address space (carrier-grade NAT)
        "100.64.0.1",
        "100.127.255.254",
        # documentation
        "192.0.2.1",
        "2001:db8::1",
        # IPv4-mapped IPv6
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:192.168.1.1",
        # NAT64 and 6to4 carrying loopback or private IPv4
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "2002:a00:1::1",
        "2002:a9fe:a9fe::",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize("address", ["172.15.255.255", "172.32.0.1", "100.63.255.255", "100.128.0.1", "11.0.0.1"])
def test_neighbours_of_private_ranges_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address)) is True


# --- host_allowed ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "patterns", "allowed"),
    [
        ("images.example.com", 443, ["images.example.com"], True),
        ("images.example.com", 443, ["*.example.com"], True),
        ("a.b.example.com", 443, ["*.example.com"], True),
        ("example.com", 443, ["*.example.com"], False),
        ("evil.com", 443, ["*.example.com"], False),
        ("example.com.evil.com", 443, ["*.example.com"], False),
        ("images.example.com.evil.com", 443, ["images.example.com"], False),
        ("Images.EXAMPLE.com", 443, ["*.example.com"], True),  # case-insensitive host
        ("images.example.com", 443, ["*.EXAMPLE.COM"], True),  # case-insensitive pattern
        ("images.example.com.", 443, ["*.example.com"], True),  # trailing dot
        ("IMAGES.example.com.", 443, ["images.example.com"], True),
        ("cdn.example.com", 8080, ["cdn.example.com:8080"], True),
        ("cdn.example.com", 80, ["cdn.example.com:8080"], False),
        ("cdn.example.com", 8443, ["cdn.example.com:*"], True),
        ("cdn.example.com", 443, ["*:443"], True),
        ("cdn.example.com", 80, ["*:443"], False),
        ("CDN.Example.com.", 8080, ["cdn.example.com:8080"], True),
        ("img1.example.com", 443, ["img?.example.com"], True),
        ("img10.example.com", 443, ["img?.example.com"], False),
        ("a.example.com", 443, [], False),
        ("a.example.com", 443, ["nope.org", "*.example.com"], True),
    ],
)
def test_host_allowed(host: str, port: int, patterns: list[str], allowed: bool) -> None:
    assert host_allowed(host, port, patterns) is allowed


# --- resolve -----------------------------------------------------------------------------------------------------


LOOPBACK_SPELLINGS = {
    "localhost": {"127.0.0.1", "::1"},
    "127.0.0.1": {"127.0.0.1"},
    "2130706433": {"127.0.0.1"},  # decimal
    "0177.0.0.1": {"127.0.0.1"},  # octal
    "0x7f000001": {"127.0.0.1"},  # hex
    "127.1": {"127.0.0.1"},  # short form
    "::1": {"::1"},
    "::ffff:127.0.0.1": {"::ffff:127.0.0.1"},
    "0": {"0.0.0.0"},
    "169.254.169.254": {"169.254.169.254"},
}


@pytest.mark.anyio
@pytest.mark.parametrize("host", sorted(LOOPBACK_SPELLINGS))
async def test_resolve_refuses_non_public_addresses(host: str) -> None:
    with pytest.raises(Forbidden):
        await resolve(host, 80, allow_private=False)


@pytest.mark.anyio
@pytest.mark.parametrize("host", sorted(LOOPBACK_SPELLINGS))
async def test_resolve_allows_them_when_private_addresses_are_allowed(host: str) -> None:
    address = ipaddress.ip_address(await resolve(host, 80, allow_private=True))
    assert address in {ipaddress.ip_address(expected) for expected in LOOPBACK_SPELLINGS[host]}


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["8.8.8.8", "2606:4700:4700::1111"])
async def test_resolve_returns_public_literals(host: str) -> None:
    assert await resolve(host, 443, allow_private=False) == host


@pytest.mark.anyio
@pytest.mark.parametrize("allow_private", [False, True])
async def test_resolve_unresolvable_name(allow_private: bool) -> None:
    with pytest.raises(OriginUnreachable):
        await resolve("nonexistent.invalid", 80, allow_private=allow_private)


# --- through HTTP --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/x.jpg",
        "http://0x7f000001/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost/",
        "http://localhost:8080/x.png",
        "http://127.1/",
        "http://0/",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/x.jpg",
        "https://192.168.1.1/x.jpg",
    ],
)
def test_remote_url_to_non_public_address_is_403(make_client: MakeClient, url: str) -> None:
    client = make_client(source={"allowed_hosts": ["*"]})
    started = time.monotonic()
    response = client.get("/img", params={"url": url})
    elapsed = time.monotonic() - started
    body = assert_problem(response, 403)
    assert "address" in body["detail"]
    assert elapsed < 2.0  # refused before any connection attempt, not after a timeout


def test_remote_url_host_not_on_the_allow_list_is_403(make_client: MakeClient) -> None:
    client = make_client(source={"allowed_hosts": ["images.example.com"]})
    for url in ("http://localhost/", "http://evil.example.org/x.jpg", "http://images.example.com.evil.org/x.jpg"):
        body = assert_problem(client.get("/img", params={"url": url}), 403)
        assert "host" in body["detail"]


def test_remote_urls_disabled_by_default(client: TestClient) -> None:
    assert_problem(client.get("/img", params={"url": "http://8.8.8.8/x.jpg"}), 403)


def test_remote_url_unresolvable_host_is_502(make_client: MakeClient) -> None:
    client = make_client(source={"allowed_hosts": ["*"]})
    assert_problem(client.get("/img", params={"url": "http://nonexistent.invalid/x.jpg"}), 502)


@pytest.mark.parametrize("url", ["http://0177.0.0.1/", "http://256.1.1.1/x.jpg"])
def test_remote_url_with_malformed_ip_host_is_a_client_error(make_settings: Callable[..., Settings], url: str) -> None:
    app = create_app(make_settings(source={"allowed_hosts": ["*"]}))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/img", params={"url": url})
        assert response.status_code in (400, 403), response.text
        assert_problem(response, response.status_code)
