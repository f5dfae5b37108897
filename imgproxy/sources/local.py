"""The local source: files under one root directory, and nothing outside it."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from imgproxy.errors import SourceNotFound, SourceTooLarge


@dataclass(frozen=True)
class SourceFile:
    key: str  # the path as the client named it, relative to the root
    path: Path
    size: int
    mtime_ns: int

    @property
    def version(self) -> str:
        """Changes whenever the file does: part of the cache key and the ETag."""
        return f"{self.mtime_ns:x}-{self.size:x}"


class LocalSource:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root.resolve()
        self.max_bytes = max_bytes

    def locate(self, key: str) -> SourceFile:
        """Resolve `key` inside the root; anything that escapes it is simply not found."""
        missing = SourceNotFound("no such image")
        parts = key.replace("\\", "/").split("/")
        if not key or "\x00" in key or key.startswith(("/", "\\")) or any(p in ("..", ".") for p in parts):
            raise missing
        try:
            path = (self.root / key).resolve(strict=True)  # follows symlinks, so the check below sees the target
            info = path.stat()
        except (OSError, RuntimeError, ValueError):
            raise missing from None
        if not path.is_relative_to(self.root) or not stat.S_ISREG(info.st_mode):
            raise missing
        if info.st_size > self.max_bytes:
            raise SourceTooLarge(f"the source has {info.st_size} bytes, over this server's budget")
        return SourceFile(key=key, path=path, size=info.st_size, mtime_ns=info.st_mtime_ns)

    def read(self, source: SourceFile) -> bytes:
        """Read the file (in a worker thread), never more than the byte budget even if it grew."""
        try:
            with open(source.path, "rb", buffering=0) as handle:
                data = handle.read(self.max_bytes + 1)
        except OSError:
            raise SourceNotFound("no such image") from None
        if len(data) > self.max_bytes:
            raise SourceTooLarge("the source is over this server's byte budget")
        return data

    def head(self, source: SourceFile, length: int = 32) -> bytes:
        with open(source.path, "rb") as handle:
            return handle.read(length)
