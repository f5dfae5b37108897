"""What every source returns: an identity and version known up front, and the bytes on demand.

    Source.locate(key) -> Located          local: stat; remote: fetch (through the source cache)
    Located.read() -> bytes                runs in a render thread (local: reads the file)

The identity and version go into the cache key and the ETag, so a result-cache hit never reads the
source's bytes, and a changed source can never be answered from a stale entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from imgproxy.errors import SourceNotFound


@dataclass(frozen=True)
class Located:
    identity: str  # e.g. "local:cats/a.jpg", "http:https://host/a.jpg", "s3:bucket/a.jpg"
    version: str  # changes whenever the bytes do
    read: Callable[[], bytes] = field(compare=False, repr=False)
    path: Path | None = None  # set for local files, which can be served untouched


class Source(Protocol):
    async def locate(self, key: str) -> Located: ...


def check_key(key: str) -> str:
    """Refuse keys that could name something outside the source: the same rule for every source."""
    parts = key.replace("\\", "/").split("/")
    if not key or "\x00" in key or key.startswith(("/", "\\")) or any(p in ("", ".", "..") for p in parts):
        raise SourceNotFound("no such image")
    return key
