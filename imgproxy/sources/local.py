"""The local source: files under one root directory, and nothing outside it."""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from cachetools import LRUCache

from imgproxy.errors import SourceNotFound, SourceTooLarge
from imgproxy.sources.base import Located, check_key


class LocalSource:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root.resolve()
        self.max_bytes = max_bytes
        # key → (real path, identity), checked to lie inside the root when it was first resolved. The real
        # path is used from then on, so a symlink swapped in later cannot lead outside the root.
        self._resolved: LRUCache[str, tuple[Path, str]] = LRUCache(maxsize=4096)

    async def locate(self, key: str) -> Located:
        """Resolve `key` inside the root and stat it; anything that escapes the root is not found."""
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = self._resolve(key)
            self._resolved[key] = resolved
        path, identity = resolved
        try:
            info = os.stat(path)
        except OSError:
            self._resolved.pop(key, None)
            raise SourceNotFound("no such image") from None
        if not stat.S_ISREG(info.st_mode):
            raise SourceNotFound("no such image")
        if info.st_size > self.max_bytes:
            raise SourceTooLarge(f"the source has {info.st_size} bytes, over this server's budget")
        return Located(
            identity=identity,
            version=f"{info.st_mtime_ns:x}-{info.st_size:x}",
            read=functools.partial(self._read, path),
            path=path,
        )

    def _resolve(self, key: str) -> tuple[Path, str]:
        check_key(key)
        try:
            path = (self.root / key).resolve(strict=True)  # follows symlinks: the check below sees the target
        except (OSError, RuntimeError, ValueError):
            raise SourceNotFound("no such image") from None
        if not path.is_relative_to(self.root):
            raise SourceNotFound("no such image")
        return path, f"local:{path.relative_to(self.root)}"

    def _read(self, path: Path) -> bytes:
        """Read the file (in a render thread), never more than the byte budget even if it grew."""
        try:
            with open(path, "rb", buffering=0) as handle:
                data = handle.read(self.max_bytes + 1)
        except OSError:
            raise SourceNotFound("no such image") from None
        if len(data) > self.max_bytes:
            raise SourceTooLarge("the source is over this server's byte budget")
        return data
