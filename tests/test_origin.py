"""Remote sources against a real loopback origin: mapping, allow-list, address safety, redirects, origin
failures and timeouts, byte budgets, sniffing, header hygiene, and the cache of fetched originals."""

from __future__ import annotations

import asyncio
import gzip
import io
import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from starlette.testclient import TestClient

import imgproxy.sources.address
from imgproxy.app import create_app
from imgproxy.settings import Settings
from imgproxy.sources.address import host_allowed
from tests.conftest import assert_problem, decode
from tests.origin import (
    Origin,
    closed_port,
    corpus_files,
    etag_for,
    origin_fixture,  # noqa: F401
)

MakeClient = Callable[..., TestClient]
FILES = corpus_files()
SIZES = {name: Image.open(io.BytesIO(data)).size for name, data in FILES.items()}
MIB = 1024 * 1024


# --- helpers ------------------------------------------------------------------------------------------------------


def assert_image(response: httpx.Response, fmt: str, width: int, source: str | None = None) -> Image.Image:
    """A decodable image of `fmt`, `width` wide, with the aspect ratio of `source` (to within a pixel)."""
    assert response.status_code == 200, response.text
    image = decode(response.content)
    assert image.format == fmt
    assert response.headers["content-type"] == Image.MIME[fmt]
    assert image.width == width
    if source is not None:
        source_width, source_height = SIZES[source]
        assert abs(image.height - width * source_height / source_width) <= 1, (image.size, SIZES[source])
    return image


def origin_client(make_client: MakeClient, origin: Origin, **source: Any) -> TestClient:
    """/img/{path} → the origin (loopback, so private addresses are allowed)."""
    return make_client(source={"origin_url": origin.url, "allow_private_addresses": True, **source})


def url_client(make_client: MakeClient, *patterns: str, **source: Any) -> TestClient:
    """/img?url= for `patterns` (loopback, so private addresses are allowed)."""
    return make_client(source={"allowed_hosts": list(patterns), "allow_private_addresses": True, **source})


def remote(url: str, **options: str | int) -> str:
    query = "&".join(f"{name}={value}" for name, value in options.items())
    return f"/img?url={quote(url, safe='')}" + (f"&{query}" if query else "")


# --- mapping and the allow-list -----------------------------------------------------------------------------------


def test_origin_url_maps_img_path_to_the_origin(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin)
    response = client.get("/img/images/medium.jpg", params={"w": 300, "fm": "png"})
    assert_image(response, "PNG", 300, "medium.jpg")
    assert response.headers["x-cache"] == "MISS"
    assert origin.count("/images/medium.jpg") == 1
    seen = origin.requests("/images/medium.jpg")[0]
    assert seen["host"] == f"127.0.0.1:{origin.port}"
    assert seen["user-agent"] == "imgproxy"
    assert seen["accept-encoding"] == "identity"
    assert "if-none-match" not in seen  # nothing cached yet: an unconditional fetch


def test_origin_url_percent_encodes_the_path(make_client: MakeClient, origin: Origin) -> None:
    origin.set_file("a b?c.jpg", FILES["medium.jpg"])
    response = origin_client(make_client, origin).get("/img/images/a%20b%3Fc.jpg", params={"w": 64, "fm": "jpeg"})
    assert_image(response, "JPEG", 64, "medium.jpg")
    assert origin.count("/images/a b?c.jpg") == 1  # the query mark stayed part of the path


def test_url_parameter_fetches_from_an_allowed_host(make_client: MakeClient, origin: Origin) -> None:
    client = url_client(make_client, "127.0.0.1")
    response = client.get(remote(origin.url_for("images/chelsea.png"), w=100, fm="webp"))
    assert_image(response, "WEBP", 100, "chelsea.png")
    assert origin.count("/images/chelsea.png") == 1


def test_url_parameter_host_not_on_the_allow_list_is_forbidden(make_client: MakeClient, origin: Origin) -> None:
    client = url_client(make_client, "127.0.0.1")
    # localhost is the very same server, but not the name on the list
    assert_problem(client.get(remote(origin.url_for("images/medium.jpg", host="localhost"), w=50)), 403)
    assert origin.count() == 0


def test_url_parameter_is_refused_when_allowed_hosts_is_empty(make_client: MakeClient, origin: Origin) -> None:
    client = make_client(source={"allow_private_addresses": True})
    assert_problem(client.get(remote(origin.url_for("images/medium.jpg"), w=50)), 403)
    assert origin.count() == 0


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1:{port}/images/medium.jpg",
        "gopher://127.0.0.1:{port}/_GET%20/images/medium.jpg",
        "//127.0.0.1:{port}/images/medium.jpg",
        "127.0.0.1:{port}/images/medium.jpg",
    ],
)
def test_url_parameter_refuses_non_http_schemes(make_client: MakeClient, origin: Origin, url: str) -> None:
    client = url_client(make_client, "*")
    body = assert_problem(client.get(remote(url.format(port=origin.port), w=50)), 400)
    assert body["param"] == "url"
    assert origin.count() == 0


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1:{port}/_x", "ftp://127.0.0.1/x"])
def test_a_redirect_to_a_non_http_scheme_is_forbidden(make_client: MakeClient, origin: Origin, target: str) -> None:
    client = url_client(make_client, "*")
    location = quote(target.format(port=origin.port), safe="")
    assert_problem(client.get(remote(origin.url_for(f"redirect-to?to={location}"), w=50)), 403)
    assert origin.count() == 1  # the redirect itself, nothing after it


@pytest.mark.parametrize(
    ("host", "port", "patterns", "allowed"),
    [
        ("cdn.example.com", 443, ["*.example.com"], True),
        ("a.b.example.com", 443, ["*.example.com"], True),
        ("CDN.Example.COM.", 443, ["*.example.com"], True),  # case and the trailing dot do not matter
        ("example.com", 443, ["*.example.com"], False),  # the apex is not a subdomain
        ("evil-example.com", 443, ["*.example.com"], False),
        ("example.com.evil.net", 443, ["*.example.com"], False),
        ("cdn.example.com", 443, ["cdn.example.com:443"], True),
        ("cdn.example.com", 8443, ["cdn.example.com:443"], False),  # host:port pins the port
        ("cdn.example.com", 8443, ["cdn.example.com"], True),  # a bare host allows every port
        ("cdn.example.com", 8443, ["cdn.example.com:*"], True),
        ("img.example.org", 80, ["*.example.com", "img.example.org"], True),
        ("img.example.org", 80, [], False),
        ("127.0.0.1", 80, ["127.0.0.*"], True),
        ("127.0.0.10", 80, ["127.0.0.?"], False),
    ],
)
def test_host_allowed_patterns(host: str, port: int, patterns: list[str], allowed: bool) -> None:
    assert host_allowed(host, port, patterns) is allowed


@pytest.mark.parametrize(
    ("patterns", "host", "status"),
    [
        (["127.0.0.*"], "127.0.0.1", 200),
        (["127.0.0.1:{port}"], "127.0.0.1", 200),
        (["127.0.0.1:{closed}"], "127.0.0.1", 403),
        (["localhost:*"], "localhost", 200),
        (["10.*", "*.example.com"], "127.0.0.1", 403),
    ],
)
def test_glob_and_host_port_patterns_over_http(
    make_client: MakeClient, origin: Origin, patterns: list[str], host: str, status: int
) -> None:
    client = url_client(make_client, *(p.format(port=origin.port, closed=closed_port()) for p in patterns))
    response = client.get(remote(origin.url_for("images/chelsea.png", host=host), w=40, fm="png"))
    if status == 200:
        assert_image(response, "PNG", 40, "chelsea.png")
        assert origin.count() == 1
    else:
        assert_problem(response, status)
        assert origin.count() == 0


def test_the_host_header_keeps_the_name_while_the_checked_address_is_dialled(
    make_client: MakeClient, origin: Origin
) -> None:
    client = url_client(make_client, "localhost")
    response = client.get(remote(origin.url_for("images/chelsea.png", host="localhost"), w=40, fm="png"))
    assert_image(response, "PNG", 40, "chelsea.png")
    assert origin.requests("/images/chelsea.png")[0]["host"] == f"localhost:{origin.port}"


def test_an_ipv6_origin_is_fetched_from_its_checked_address(make_client: MakeClient) -> None:
    six = Origin(host="::1")
    try:
        client = url_client(make_client, "*")
        response = client.get(remote(six.url_for("images/chelsea.png"), w=40, fm="png"))
        assert_image(response, "PNG", 40, "chelsea.png")
        assert six.requests("/images/chelsea.png")[0]["host"] == f"[::1]:{six.port}"
        # and, by default, ::1 is loopback: refused before any request
        client = make_client(source={"allowed_hosts": ["*"]})
        assert_problem(client.get(remote(six.url_for("images/medium.jpg"), w=40)), 403)
        assert six.count("/images/medium.jpg") == 0
    finally:
        six.close()


@pytest.mark.parametrize(
    ("host", "port", "pattern"), [("::1", 80, "::1"), ("::1", 443, "[::1]:443"), ("2001:db8::1", 443, "2001:db8::1")]
)
def test_host_allowed_ipv6_patterns(host: str, port: int, pattern: str) -> None:
    assert host_allowed(host, port, [pattern])


def test_proxy_variables_in_the_environment_are_ignored(
    make_client: MakeClient, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy from the environment would receive the request instead of the checked address."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = origin_client(make_client, origin)
    assert_image(client.get("/img/images/chelsea.png", params={"w": 30, "fm": "png"}), "PNG", 30, "chelsea.png")
    assert origin.count("/images/chelsea.png") == 1


# --- address safety -----------------------------------------------------------------------------------------------


def test_private_origin_url_is_refused_by_default(make_client: MakeClient, origin: Origin) -> None:
    client = make_client(source={"origin_url": origin.url})
    assert_problem(client.get("/img/images/medium.jpg", params={"w": 50}), 403)
    assert origin.count() == 0


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "2130706433", "0x7f.1", "127.1"])
def test_loopback_url_is_refused_by_default_in_every_spelling(
    make_client: MakeClient, origin: Origin, host: str
) -> None:
    client = make_client(source={"allowed_hosts": ["*"]})  # the allow-list lets everything through
    assert_problem(client.get(remote(origin.url_for("images/medium.jpg", host=host), w=50)), 403)
    assert origin.count() == 0


def test_a_redirect_to_a_host_not_on_the_allow_list_is_forbidden(make_client: MakeClient, origin: Origin) -> None:
    client = url_client(make_client, "127.0.0.1")
    response = client.get(remote(origin.url_for("redirect-foreign/images/medium.jpg"), w=50))
    assert_problem(response, 403)
    assert origin.count("/redirect-foreign/images/medium.jpg") == 1
    assert origin.count("/images/medium.jpg") == 0  # the second hop was never made


def test_a_redirect_to_another_port_is_checked_against_host_port_patterns(
    make_client: MakeClient, origin: Origin
) -> None:
    other = Origin()
    try:
        client = url_client(make_client, f"127.0.0.1:{origin.port}")
        response = client.get(remote(origin.url_for(f"redirect-port/{other.port}/images/medium.jpg"), w=50))
        assert_problem(response, 403)
        assert other.count() == 0
        # the same hop is followed once the other port is on the list too
        client = url_client(make_client, f"127.0.0.1:{origin.port}", f"127.0.0.1:{other.port}")
        response = client.get(remote(origin.url_for(f"redirect-port/{other.port}/images/medium.jpg"), w=50))
        assert_image(response, "JPEG", 50, "medium.jpg")
        assert other.count("/images/medium.jpg") == 1
    finally:
        other.close()


def test_a_redirect_to_the_metadata_address_is_refused_without_connecting(
    make_client: MakeClient, origin: Origin
) -> None:
    client = url_client(make_client, "127.0.0.1", timeout=3)
    started = time.monotonic()
    response = client.get(remote(origin.url_for("redirect-metadata"), w=50))
    assert_problem(response, 403)  # a connection attempt would have ended in a 502, or a 504 after 3 s
    assert time.monotonic() - started < 2.5
    assert origin.count("/redirect-metadata") == 1


def test_the_address_check_is_repeated_on_every_hop(
    make_client: MakeClient, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With private addresses refused and every host allowed, only the address check stands between a
    redirect and the metadata service. The loopback origin itself is let through as if it were public."""
    is_public = imgproxy.sources.address.is_public
    loopback = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(
        imgproxy.sources.address, "is_public", lambda address: address == loopback or is_public(address)
    )
    client = make_client(source={"allowed_hosts": ["*"], "timeout": 3})
    assert_image(client.get(remote(origin.url_for("images/chelsea.png"), w=30, fm="png")), "PNG", 30, "chelsea.png")
    started = time.monotonic()
    assert_problem(client.get(remote(origin.url_for("redirect-metadata"), w=50)), 403)
    assert time.monotonic() - started < 2.5  # refused before any connection attempt
    targets = [
        f"http://127.0.0.2:{origin.port}/images/medium.jpg",  # loopback, just not the address let through
        f"http://0.0.0.0:{origin.port}/images/medium.jpg",  # "this host": Linux dials loopback
        "http://10.0.0.1/x.jpg",
        "http://[::1]/x.jpg",
        "http://[::ffff:169.254.169.254]/x.jpg",
    ]
    for target in targets:
        response = client.get(remote(origin.url_for(f"redirect-to?to={quote(target, safe='')}"), w=50))
        assert_problem(response, 403)
    assert origin.count("/redirect-to") == len(targets)
    assert origin.count("/images/medium.jpg") == 0


# --- redirects ----------------------------------------------------------------------------------------------------


def test_redirects_within_max_redirects_are_followed(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin, max_redirects=2)
    assert_image(client.get("/img/redirect/2/medium.jpg", params={"w": 120, "fm": "jpeg"}), "JPEG", 120, "medium.jpg")
    assert [origin.count(f"/redirect/{n}/medium.jpg") for n in (2, 1)] == [1, 1]
    assert origin.count("/images/medium.jpg") == 1


def test_more_than_max_redirects_is_a_bad_gateway(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin, max_redirects=2)
    assert_problem(client.get("/img/redirect/3/medium.jpg", params={"w": 120}), 502)
    assert [origin.count(f"/redirect/{n}/medium.jpg") for n in (3, 2, 1)] == [1, 1, 1]
    assert origin.count("/images/medium.jpg") == 0  # the hop past the limit is never made


def test_no_redirects_at_all_when_max_redirects_is_zero(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin, max_redirects=0)
    assert_problem(client.get("/img/redirect/1/medium.jpg", params={"w": 120}), 502)
    assert_image(client.get("/img/images/medium.jpg", params={"w": 120, "fm": "jpeg"}), "JPEG", 120, "medium.jpg")


# --- origin failures: mapped, bounded in time, never cached -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "timeout"),
    [
        ("status/404", 404, 5.0),
        ("status/410", 404, 5.0),
        ("status/500", 502, 5.0),
        ("status/503", 502, 5.0),
        ("status/403", 502, 5.0),
        ("slow/chelsea.png", 504, 1.0),
        ("hang", 504, 1.0),
    ],
)
def test_origin_failures_are_mapped_and_never_cached(
    make_client: MakeClient, origin: Origin, path: str, status: int, timeout: float
) -> None:
    client = origin_client(make_client, origin, timeout=timeout)
    for attempt in (1, 2):
        started = time.monotonic()
        assert_problem(client.get(f"/img/{path}", params={"w": 50}), status)
        assert time.monotonic() - started < 5
        assert origin.count("/" + path) == attempt  # the failure was not kept: the origin is asked again


def test_connection_refused_is_a_bad_gateway(make_client: MakeClient) -> None:
    client = make_client(source={"origin_url": f"http://127.0.0.1:{closed_port()}/", "allow_private_addresses": True})
    started = time.monotonic()
    assert_problem(client.get("/img/images/medium.jpg", params={"w": 50}), 502)
    assert_problem(client.get("/img/images/medium.jpg", params={"w": 50}), 502)
    assert time.monotonic() - started < 5


def test_a_failed_origin_recovers_once_it_serves_again(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin)
    assert_problem(client.get("/img/images/late.jpg", params={"w": 80}), 404)
    origin.set_file("late.jpg", FILES["medium.jpg"])
    assert_image(client.get("/img/images/late.jpg", params={"w": 80, "fm": "jpeg"}), "JPEG", 80, "medium.jpg")
    assert origin.count("/images/late.jpg") == 2


def test_an_unconditional_304_is_a_bad_gateway(make_settings: Callable[..., Settings], origin: Origin) -> None:
    app = create_app(make_settings(source={"origin_url": origin.url, "allow_private_addresses": True}))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/img/unconditional-304/medium.jpg", params={"w": 50})
    assert origin.count("/unconditional-304/medium.jpg") == 1
    assert_problem(response, 502)


def test_a_body_cut_short_of_its_content_length_is_a_bad_gateway(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin)
    assert_problem(client.get("/img/truncated/medium.jpg", params={"w": 50}), 502)
    assert_problem(client.get("/img/truncated/medium.jpg", params={"w": 50}), 502)
    assert origin.count("/truncated/medium.jpg") == 2


@pytest.mark.parametrize("via", ["url", "redirect"])
def test_a_port_out_of_range_is_not_a_server_error(
    make_settings: Callable[..., Settings], origin: Origin, via: str
) -> None:
    target = "http://127.0.0.1:99999/images/medium.jpg"
    if via == "redirect":
        target = origin.url_for(f"redirect-to?to={quote(target, safe='')}")
    app = create_app(make_settings(source={"allowed_hosts": ["*"], "allow_private_addresses": True, "timeout": 3}))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(remote(target, w=50))
    assert response.status_code in (400, 403, 502), response.text
    assert_problem(response, response.status_code)


def test_a_malformed_date_next_to_expires_is_not_a_server_error(
    make_settings: Callable[..., Settings], origin: Origin
) -> None:
    query = "header=" + quote("Expires: Thu, 01 Dec 2094 16:00:00 GMT") + "&header=" + quote("Date: nonsense")
    app = create_app(make_settings(source={"allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True}))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(remote(origin.url_for(f"custom/chelsea.png?{query}"), w=40, fm="png"))
    assert_image(response, "PNG", 40, "chelsea.png")


@pytest.mark.parametrize("header", ['ETag: "\u00e9tag"', "Last-Modified: Thu, 01 Dec 1994 16:00:00 \u00e9"])
def test_non_ascii_validators_do_not_break_revalidation(
    make_settings: Callable[..., Settings], origin: Origin, header: str
) -> None:
    url = origin.url_for("custom/chelsea.png?header=" + quote(header))
    settings = make_settings(
        source={"allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True, "cache_min_ttl": 0, "cache_max_ttl": 0}
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        first = client.get(remote(url, w=40, fm="png"))
        second = client.get(remote(url, w=40, fm="png"))  # expired at once: a revalidation
    assert_image(first, "PNG", 40, "chelsea.png")
    assert_image(second, "PNG", 40, "chelsea.png")
    assert origin.count("/custom/chelsea.png") == 2


# --- the byte budget ----------------------------------------------------------------------------------------------


def test_an_oversized_content_length_is_refused_without_reading_the_body(
    make_client: MakeClient, origin: Origin
) -> None:
    client = origin_client(make_client, origin, timeout=5)
    started = time.monotonic()
    # the origin declares 1 GB and then sends nothing: reading the body would end in a 504 after 5 s
    assert_problem(client.get("/img/oversized", params={"w": 50}), 413)
    assert time.monotonic() - started < 2
    assert origin.count("/oversized") == 1


def test_an_endless_body_is_cut_at_the_byte_budget(make_client: MakeClient, origin: Origin) -> None:
    client = make_client(
        source={"origin_url": origin.url, "allow_private_addresses": True, "timeout": 10},
        limits={"max_source_bytes": MIB},
    )
    started = time.monotonic()
    assert_problem(client.get("/img/endless", params={"w": 50}), 413)
    assert time.monotonic() - started < 5


def test_a_gzip_bomb_is_counted_inflated(make_client: MakeClient, origin: Origin) -> None:
    compressed = len(gzip.compress(b"\xff\xd8\xff\xe0" + bytes(origin.bomb_bytes), compresslevel=9))
    assert compressed < MIB < origin.bomb_bytes  # only the inflated size is over the budget
    client = make_client(
        source={"origin_url": origin.url, "allow_private_addresses": True}, limits={"max_source_bytes": MIB}
    )
    assert_problem(client.get("/img/gzip-bomb", params={"w": 50}), 413)
    assert origin.count("/gzip-bomb") == 1


def test_an_image_within_the_byte_budget_is_served(make_client: MakeClient, origin: Origin) -> None:
    assert len(FILES["medium.jpg"]) < MIB
    client = make_client(
        source={"origin_url": origin.url, "allow_private_addresses": True}, limits={"max_source_bytes": MIB}
    )
    assert_image(client.get("/img/images/medium.jpg", params={"w": 90, "fm": "webp"}), "WEBP", 90, "medium.jpg")
    budget = len(FILES["chelsea.png"]) - 1
    client = make_client(
        source={"origin_url": origin.url, "allow_private_addresses": True}, limits={"max_source_bytes": budget}
    )
    assert_problem(client.get("/img/images/chelsea.png", params={"w": 90}), 413)  # one byte over


# --- the body decides the type ------------------------------------------------------------------------------------


def test_html_labelled_image_jpeg_is_unsupported(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin)
    assert_problem(client.get("/img/html-as-jpeg", params={"w": 50}), 415)
    assert_problem(client.get("/img/html-as-jpeg", params={"w": 50}), 415)
    assert origin.count("/html-as-jpeg") == 2  # not cached either


def test_a_jpeg_labelled_text_html_is_served(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin)
    assert_image(client.get("/img/jpeg-as-html/medium.jpg", params={"w": 150, "fm": "png"}), "PNG", 150, "medium.jpg")


def test_passthrough_of_a_remote_original_uses_the_sniffed_type(make_client: MakeClient, origin: Origin) -> None:
    client = make_client(source={"origin_url": origin.url, "allow_private_addresses": True}, http={"passthrough": True})
    response = client.get("/img/jpeg-as-html/medium.jpg")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content == FILES["medium.jpg"]
    assert_problem(client.get("/img/html-as-jpeg"), 415)


# --- header hygiene -----------------------------------------------------------------------------------------------


def test_origin_headers_never_reach_the_client(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin)
    response = client.get("/img/images/medium.jpg", params={"w": 64, "fm": "jpeg"})
    assert_image(response, "JPEG", 64, "medium.jpg")
    assert "set-cookie" not in response.headers
    assert "x-whatever" not in response.headers
    assert "OriginTest" not in response.headers.get("server", "")
    assert response.headers["etag"] != etag_for(FILES["medium.jpg"])  # imgproxy's own validator
    assert response.headers["cache-control"] == Settings().http.cache_control  # not the origin's max-age=60
    assert not client.cookies  # nothing for the client's jar either


def test_an_origin_cookie_is_never_replayed(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin, cache_min_ttl=0, cache_max_ttl=0)
    for name in ("medium.jpg", "chelsea.png", "medium.jpg"):
        assert client.get(f"/img/images/{name}", params={"w": 32}).status_code == 200
    seen = origin.all_requests()
    assert len(seen) == 3  # the third was a revalidation, on the same pooled client
    assert all("cookie" not in headers for headers in seen), seen


@pytest.mark.parametrize("mode", ["origin_url", "url"])
def test_client_credentials_are_never_forwarded(make_client: MakeClient, origin: Origin, mode: str) -> None:
    if mode == "origin_url":
        client, target = origin_client(make_client, origin), "/img/images/medium.jpg?w=40"
    else:
        client, target = url_client(make_client, "127.0.0.1"), remote(origin.url_for("images/medium.jpg"), w=40)
    response = client.get(
        target,
        headers={
            "Cookie": "session=client-secret",
            "Authorization": "Bearer client-token",
            "X-Forwarded-For": "203.0.113.9",
            "Referer": "https://site.example/page",
        },
    )
    assert response.status_code == 200
    (seen,) = origin.requests("/images/medium.jpg")
    for name in ("cookie", "authorization", "x-forwarded-for", "referer", "proxy-authorization"):
        assert name not in seen, seen
    assert "client-secret" not in str(seen) and "client-token" not in str(seen)


# --- the cache of fetched originals -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ten_widths_of_one_remote_image_fetch_it_once(
    make_settings: Callable[..., Settings], origin: Origin
) -> None:
    app: FastAPI = create_app(make_settings(source={"allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True}))
    url = origin.url_for("images/medium.jpg")
    widths = [100 + 37 * index for index in range(10)]
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=30) as client,
    ):
        responses = await asyncio.gather(*(client.get(remote(url, w=width, fm="jpeg")) for width in widths))
        for width, response in zip(widths, responses, strict=True):
            assert_image(response, "JPEG", width, "medium.jpg")
            assert response.headers["x-cache"] == "MISS"
        assert origin.count("/images/medium.jpg") == 1
        assert len({response.headers["etag"] for response in responses}) == 10
        # later, within the origin's max-age: another width, still no new fetch
        assert_image(await client.get(remote(url, w=555, fm="png")), "PNG", 555, "medium.jpg")
        assert origin.count("/images/medium.jpg") == 1


def test_ten_widths_from_threads_fetch_once(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin)
    widths = list(range(60, 160, 10))

    with ThreadPoolExecutor(max_workers=len(widths)) as pool:
        responses = list(pool.map(lambda w: client.get("/img/images/big.jpg", params={"w": w, "fm": "jpeg"}), widths))
    for width, response in zip(widths, responses, strict=True):
        assert_image(response, "JPEG", width, "big.jpg")
    assert origin.count("/images/big.jpg") == 1


def test_an_expired_original_is_revalidated_with_its_etag(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin, cache_min_ttl=0, cache_max_ttl=0)
    first = client.get("/img/images/medium.jpg", params={"w": 200, "fm": "jpeg"})
    assert_image(first, "JPEG", 200, "medium.jpg")
    assert first.headers["x-cache"] == "MISS"

    second = client.get("/img/images/medium.jpg", params={"w": 200, "fm": "jpeg"})
    assert_image(second, "JPEG", 200, "medium.jpg")
    assert origin.count("/images/medium.jpg") == 2
    assert origin.not_modified["/images/medium.jpg"] == 1  # the origin answered 304
    assert origin.requests("/images/medium.jpg")[1]["if-none-match"] == etag_for(FILES["medium.jpg"])
    assert second.headers["etag"] == first.headers["etag"]  # same original version: same result
    assert second.headers["x-cache"] == "HIT"

    third = client.get("/img/images/medium.jpg", params={"w": 120, "fm": "png"})  # a new width after a 304
    assert_image(third, "PNG", 120, "medium.jpg")
    assert origin.not_modified["/images/medium.jpg"] == 2


def test_a_changed_origin_body_gives_a_new_etag(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin, cache_min_ttl=0, cache_max_ttl=0)
    origin.set_file("photo.jpg", FILES["medium.jpg"])
    first = client.get("/img/images/photo.jpg", params={"w": 100, "fm": "png"})
    assert_image(first, "PNG", 100, "medium.jpg")

    origin.set_file("photo.jpg", FILES["chelsea.png"])  # new bytes, new origin ETag
    second = client.get("/img/images/photo.jpg", params={"w": 100, "fm": "png"})
    assert_image(second, "PNG", 100, "chelsea.png")
    assert second.headers["etag"] != first.headers["etag"]
    assert second.headers["x-cache"] == "MISS"
    assert origin.not_modified["/images/photo.jpg"] == 0
    assert origin.requests("/images/photo.jpg")[1]["if-none-match"] == etag_for(FILES["medium.jpg"])

    # the old ETag is no longer answered 304
    stale = client.get(
        "/img/images/photo.jpg", params={"w": 100, "fm": "png"}, headers={"If-None-Match": first.headers["etag"]}
    )
    assert stale.status_code == 200
    assert_image(stale, "PNG", 100, "chelsea.png")


@pytest.mark.anyio
async def test_concurrent_failures_coalesce_and_are_not_kept(
    make_settings: Callable[..., Settings], origin: Origin
) -> None:
    settings = make_settings(source={"origin_url": origin.url, "allow_private_addresses": True})
    app: FastAPI = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=30) as client,
    ):
        responses = await asyncio.gather(*(client.get(f"/img/status/503?w={40 + w}") for w in range(10)))
        for response in responses:
            assert_problem(response, 502)
        assert origin.count("/status/503") == 1  # ten requests, one origin fetch
        assert_problem(await client.get("/img/status/503?w=40"), 502)
        assert origin.count("/status/503") == 2  # the failure was not kept


def test_an_original_with_only_last_modified_is_revalidated_with_it(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin, cache_min_ttl=0)  # the route says max-age=0: every use revalidates
    first = client.get("/img/dated/medium.jpg", params={"w": 70, "fm": "jpeg"})
    assert_image(first, "JPEG", 70, "medium.jpg")
    assert_image(client.get("/img/dated/medium.jpg", params={"w": 70, "fm": "jpeg"}), "JPEG", 70, "medium.jpg")
    seen = origin.requests("/dated/medium.jpg")
    assert len(seen) == 2
    assert seen[1]["if-modified-since"] == origin.last_modified("medium.jpg")
    assert "if-none-match" not in seen[1]
    assert origin.not_modified["/dated/medium.jpg"] == 1

    origin.set_file("medium.jpg", FILES["chelsea.png"])
    changed = client.get("/img/dated/medium.jpg", params={"w": 70, "fm": "jpeg"})
    assert_image(changed, "JPEG", 70, "chelsea.png")
    assert changed.headers["etag"] != first.headers["etag"]


def test_within_max_age_the_origin_is_not_asked_again(make_client: MakeClient, origin: Origin) -> None:
    client = origin_client(make_client, origin)  # the origin says max-age=60, the default minimum is 60
    for width in (40, 80, 120):
        assert_image(
            client.get("/img/images/chelsea.png", params={"w": width, "fm": "png"}), "PNG", width, "chelsea.png"
        )
    origin.set_file("chelsea.png", FILES["medium.jpg"])  # the origin changes, but the cached copy is still fresh
    assert_image(client.get("/img/images/chelsea.png", params={"w": 60, "fm": "png"}), "PNG", 60, "chelsea.png")
    assert origin.count("/images/chelsea.png") == 1
    assert origin.not_modified["/images/chelsea.png"] == 0
