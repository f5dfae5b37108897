"""Fetch originals over HTTP(S), defensively.

One shared `httpx.AsyncClient` (pooled, cookies refused, no automatic redirects). Every hop is checked:
scheme, host allow-list, resolved address; the connection goes to the checked address (Host header and
TLS SNI keep the name), so DNS cannot change between check and connect. One deadline covers the whole
fetch, redirects and body included; the body is counted while it streams and cut at the byte budget.
"""

from __future__ import annotations

import asyncio
import email.utils
import http.cookiejar
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from imgproxy.errors import (
    Forbidden,
    OriginTimeout,
    OriginUnreachable,
    SourceNotFound,
    SourceTooLarge,
    UnsupportedImage,
)
from imgproxy.sniff import sniff_media_type
from imgproxy.sources import address


@dataclass(frozen=True)
class Validators:
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class Fetched:
    data: bytes
    media_type: str
    validators: Validators
    max_age: int | None  # from the origin's Cache-Control, if it gave one


class NotModified(Exception):
    """The origin confirmed (304) that the cached copy is still current."""

    def __init__(self, max_age: int | None) -> None:
        super().__init__("not modified")
        self.max_age = max_age


def new_client(max_connections: int = 64) -> httpx.AsyncClient:
    """The one client the app's lifespan owns. Its jar refuses every cookie, so an origin's Set-Cookie
    is never replayed on a later fetch."""
    client = httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,  # proxies from the environment would bypass the address checks
        timeout=httpx.Timeout(10.0),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=16),
        headers={"User-Agent": "imgproxy", "Accept": "image/*", "Accept-Encoding": "identity"},
    )
    client.cookies.jar.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return client


_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-maxage|max-age)\s*=\s*\"?(\d+)", re.I)


def max_age(headers: httpx.Headers) -> int | None:
    control = headers.get("cache-control", "")
    if re.search(r"no-store|no-cache", control, re.I):
        return 0
    match = _MAX_AGE.search(control)
    if match:
        return int(match.group(1))
    expires = headers.get("expires")
    if expires:
        try:
            when = email.utils.parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError):
            return 0  # an invalid Expires means "already expired" (RFC 9111 5.3)
        try:
            now = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
        except (KeyError, TypeError, ValueError):
            now = time.time()
        return max(0, int(when - now))
    return None


class HttpFetcher:
    def __init__(
        self,
        *,
        client: Callable[[], httpx.AsyncClient],
        host_allowed: Callable[[str, int], bool],
        max_bytes: int,
        timeout: float,
        max_redirects: int,
        allow_private: bool,
    ) -> None:
        self._client = client
        self._host_allowed = host_allowed
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.allow_private = allow_private

    async def fetch(self, url: str, validators: Validators | None = None) -> Fetched:
        """GET `url` with every rule applied; raises `NotModified` when `validators` still hold."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._follow(url, validators)
        except TimeoutError:
            raise OriginTimeout(f"the origin did not answer within {self.timeout:g} s") from None
        except httpx.TimeoutException:
            raise OriginTimeout("the origin did not answer in time") from None
        except (httpx.HTTPError, httpx.InvalidURL, OSError):  # InvalidURL: from a redirect's Location
            raise OriginUnreachable("the origin could not be reached") from None

    async def _follow(self, url: str, validators: Validators | None) -> Fetched:
        for _hop in range(self.max_redirects + 1):
            request = await self._request(httpx.URL(url), validators)
            response = await self._client().send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = str(httpx.URL(url).join(response.headers["location"]))
                    continue
                return await self._read(response)
            finally:
                await response.aclose()
        raise OriginUnreachable(f"the origin redirected more than {self.max_redirects} times")

    async def _request(self, url: httpx.URL, validators: Validators | None) -> httpx.Request:
        if url.scheme not in ("http", "https") or not url.host:
            raise Forbidden("only http and https origins are allowed")
        port = url.port or (443 if url.scheme == "https" else 80)
        if not 0 < port < 65536:
            raise OriginUnreachable("the origin's port is out of range")
        if not self._host_allowed(url.host, port):
            raise Forbidden("the origin's host is not allowed")
        checked = await address.resolve(url.host, port, self.allow_private)
        headers = {"Host": url.netloc.decode("ascii")}
        if validators and validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators and validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        # Connect to the address that was checked; Host and SNI keep the name for routing and TLS.
        return self._client().build_request(
            "GET", url.copy_with(host=checked), headers=headers, extensions={"sni_hostname": url.host}
        )

    async def _read(self, response: httpx.Response) -> Fetched:
        status = response.status_code
        if status == 304:
            raise NotModified(max_age(response.headers))
        if status in (404, 410):
            raise SourceNotFound("the origin has no such image")
        if status != 200:
            raise OriginUnreachable(f"the origin answered {status}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise SourceTooLarge(f"the origin declares {declared} bytes, over this server's budget")
        chunks, total = [], 0
        async for chunk in response.aiter_bytes():  # decoded bytes: an inflated body counts in full
            total += len(chunk)
            if total > self.max_bytes:
                raise SourceTooLarge("the origin sent more bytes than this server's budget")
            chunks.append(chunk)
        data = b"".join(chunks)
        media_type = sniff_media_type(data[:32])
        if media_type is None:
            raise UnsupportedImage("the origin's body is not an image in a supported format")
        return Fetched(
            data=data,
            media_type=media_type,
            validators=Validators(_ascii(response.headers.get("etag")), _ascii(response.headers.get("last-modified"))),
            max_age=max_age(response.headers),
        )


def _ascii(value: str | None) -> str | None:
    """A validator worth sending back: request headers must be ASCII."""
    return value if value is not None and value.isascii() else None
