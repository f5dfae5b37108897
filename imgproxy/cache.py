"""The result cache: encoded images in a byte-bounded LRU, plus coalescing of identical misses."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import LRUCache


@dataclass(frozen=True)
class CachedImage:
    content: bytes
    media_type: str
    width: int
    height: int
    headers: tuple[tuple[str, str], ...] = ()  # what the render has to say (e.g. X-Gravity), kept with it


V = TypeVar("V")


class _CountingLRU(LRUCache[Hashable, V]):
    evictions = 0
    on_evict: Callable[[], object] | None = None

    def popitem(self) -> tuple[Hashable, V]:
        self.evictions += 1
        if self.on_evict is not None:
            self.on_evict()
        return super().popitem()


class ByteLRU(Generic[V]):
    """An LRU evicting by the total bytes of its values; used for results and for fetched originals.

    It is only touched from the event loop thread (renders and fetches hand their result back to the
    loop before it is stored), so it needs no lock: asyncio never interleaves the get/put below.
    """

    def __init__(
        self, max_bytes: int, size_of: Callable[[V], int], on_evict: Callable[[], object] | None = None
    ) -> None:
        self._lru: _CountingLRU[V] = _CountingLRU(maxsize=max_bytes, getsizeof=size_of)
        self._lru.on_evict = on_evict
        self._size_of = size_of
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        entry = self._lru.get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: Hashable, entry: V) -> None:
        if self._size_of(entry) > self._lru.maxsize:
            return  # larger than the whole budget: serve it, do not keep it
        self._lru[key] = entry

    @property
    def bytes_held(self) -> int:
        return int(self._lru.currsize)

    @property
    def evictions(self) -> int:
        return self._lru.evictions

    def __len__(self) -> int:
        return len(self._lru)


def result_cache(max_bytes: int, on_evict: Callable[[], object] | None = None) -> ByteLRU[CachedImage]:
    return ByteLRU(max_bytes, lambda entry: len(entry.content), on_evict)


T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Future[T]) -> None:
        self.task = task
        self.waiters = 0


class Coalescer(Generic[T]):
    """Run one computation per key at a time; callers that arrive meanwhile await the same result.

    A computation whose callers have all gone (cancelled: their clients disconnected) is cancelled
    too, so abandoned work does not hold a render slot; one caller left keeps it going for everyone."""

    def __init__(self, on_join: Callable[[], object] | None = None) -> None:
        self._inflight: dict[Hashable, _Flight[T]] = {}
        self.coalesced = 0
        self._on_join = on_join

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result, and whether this caller joined a computation another caller had started."""
        flight = self._inflight.get(key)
        joined = flight is not None and not flight.task.cancelled()
        if flight is not None and joined:
            self.coalesced += 1
            if self._on_join is not None:
                self._on_join()
        else:  # nothing running, or a cancelled flight whose clean-up callback has not run yet
            flight = self._inflight[key] = _Flight(asyncio.ensure_future(compute()))
            flight.task.add_done_callback(functools.partial(self._land, key, flight))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task), joined
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.task.done():
                flight.task.cancel()

    def _land(self, key: Hashable, flight: _Flight[T], _: object) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]

    @property
    def inflight(self) -> int:
        return len(self._inflight)
