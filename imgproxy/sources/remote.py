"""Sources whose originals are fetched (HTTP origins, S3): a bounded cache of originals in front.

The N widths of one `srcset` download the original once: fetched bytes are kept in a byte-bounded LRU
for the origin's `max-age` (clamped to the configured minimum and maximum), then revalidated with
`If-None-Match`/`If-Modified-Since`; identical concurrent fetches coalesce. Failures are never stored.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from imgproxy.cache import ByteLRU, Coalescer
from imgproxy.errors import ImageProxyError, OriginUnreachable
from imgproxy.sources.base import Located
from imgproxy.sources.http import Fetched, NotModified, Validators

Fetch = Callable[[str, Validators | None], Awaitable[Fetched]]


@dataclass(frozen=True)
class Original:
    data: bytes
    version: str
    validators: Validators
    expires_at: float


class RemoteSource:
    def __init__(
        self,
        scheme: str,
        fetch: Fetch,
        cache_bytes: int,
        ttl_bounds: tuple[int, int],
        *,
        clock: Callable[[], float] = time.monotonic,
        on_fetch: Callable[[float, str | None], object] | None = None,
    ) -> None:
        self._on_fetch = on_fetch
        self.scheme = scheme
        self._fetch = fetch
        self.cache: ByteLRU[Original] = ByteLRU(cache_bytes, lambda original: len(original.data))
        self.fetches: Coalescer[Original] = Coalescer()
        self._ttl_bounds = ttl_bounds
        self._clock = clock
        self.fetch_count = 0  # origin round trips, revalidations included

    async def locate(self, key: str) -> Located:
        original = self.cache.get(key)
        if original is None or original.expires_at <= self._clock():
            original, _ = await self.fetches.run(key, lambda: self._refresh(key, original))
        data = original.data
        return Located(identity=f"{self.scheme}:{key}", version=original.version, read=lambda: data)

    async def _refresh(self, key: str, stale: Original | None) -> Original:
        self.fetch_count += 1
        started = time.perf_counter()
        try:
            fetched = await self._fetch(key, stale.validators if stale else None)
        except ImageProxyError as failed:
            self._report(started, failed.slug)
            raise
        except NotModified as confirmed:
            self._report(started, None)
            if stale is None:  # a 304 to a request without validators: the origin is broken
                raise OriginUnreachable("the origin answered 304 Not Modified to an unconditional request") from None
            fresh = replace(stale, expires_at=self._expiry(confirmed.max_age))
        else:
            self._report(started, None)
            version = hashlib.blake2b(fetched.data, digest_size=12).hexdigest()
            fresh = Original(fetched.data, version, fetched.validators, self._expiry(fetched.max_age))
        self.cache.put(key, fresh)
        return fresh

    def _report(self, started: float, error: str | None) -> None:
        if self._on_fetch is not None:
            self._on_fetch(time.perf_counter() - started, error)

    def _expiry(self, max_age: int | None) -> float:
        low, high = self._ttl_bounds
        ttl = low if max_age is None else min(max(max_age, low), high)
        return self._clock() + ttl
