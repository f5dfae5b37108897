"""The optional second result tier: Redis, shared by every replica.

A miss in the process's own cache looks here before rendering; a render is written to both tiers.
Redis trouble never fails a request: the tier logs a warning, counts the error and stays out of the way
for `backoff` seconds, and requests carry on with the local cache only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import ResponseError

from imgproxy.cache import CachedImage

FORMAT_VERSION = 1  # bump when the stored layout changes: old entries are then simply not found
LOG = logging.getLogger("imgproxy.shared_cache")


def encode_entry(image: CachedImage, etag: str) -> bytes:
    header = {
        "etag": etag,
        "media_type": image.media_type,
        "width": image.width,
        "height": image.height,
        "headers": image.headers,
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + image.content


def decode_entry(raw: bytes, etag: str) -> CachedImage:
    header, _, content = raw.partition(b"\n")
    fields = json.loads(header)
    if fields["etag"] != etag:
        raise ValueError("the entry belongs to another key")
    headers = tuple((str(name), str(value)) for name, value in fields["headers"])
    return CachedImage(content, str(fields["media_type"]), int(fields["width"]), int(fields["height"]), headers)


class SharedCache:
    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        ttl: int,
        max_value_bytes: int,
        on_event: Callable[[str], None],
        timeout: float = 0.25,
        backoff: float = 5.0,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._redis: redis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retired: list[redis.Redis] = []
        self._prefix = f"{namespace}:v{FORMAT_VERSION}:"
        self.ttl = ttl
        self.max_value_bytes = max_value_bytes
        self._on_event = on_event
        self._backoff = backoff
        self._down_until = 0.0

    def key(self, etag: str) -> str:
        return self._prefix + etag.strip('"')

    def _client(self) -> redis.Redis:
        """The client of the running event loop (an asyncio client cannot move between loops)."""
        loop = asyncio.get_running_loop()
        if self._redis is None or self._loop is not loop:
            if self._redis is not None:
                # Its connections belong to a loop that has ended (an app driven without its lifespan):
                # they cannot be closed from here, so they are kept until this cache itself goes away.
                self._retired.append(self._redis)
            self._redis = redis.from_url(self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout)
            self._loop = loop
        return self._redis

    async def get(self, etag: str) -> CachedImage | None:
        if self._down():
            return None
        try:
            raw = await self._client().get(self.key(etag))
        except ResponseError:  # e.g. a key of another type: this entry is unusable, Redis itself is fine
            self._on_event("error")
            return None
        except Exception as exc:
            self._failed(exc)
            return None
        if raw is None:
            self._on_event("miss")
            return None
        try:
            image = decode_entry(raw if isinstance(raw, bytes) else raw.encode(), etag)
        except (ValueError, KeyError, TypeError):
            self._on_event("error")  # a corrupt or foreign value: treat as a miss
            return None
        self._on_event("hit")
        return image

    async def put(self, etag: str, image: CachedImage) -> None:
        value = encode_entry(image, etag)
        if len(value) > self.max_value_bytes or self._down():
            return
        try:
            await self._client().set(self.key(etag), value, ex=self.ttl)
        except ResponseError:
            self._on_event("error")
            return
        except Exception as exc:
            self._failed(exc)
            return
        self._on_event("store")

    async def ping(self) -> bool:
        try:
            return bool(await self._client().ping())
        except Exception:
            return False

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _down(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self, exc: Exception) -> None:
        self._on_event("error")
        self._down_until = time.monotonic() + self._backoff
        LOG.warning(
            "redis unavailable, serving from the local cache only for %.0f s: %s", self._backoff, type(exc).__name__
        )
