"""Build (and sign) image URLs from Python.

    >>> from imgproxy.client import ImageUrls
    >>> urls = ImageUrls("https://img.example.com", key="k3y-0123456789abcdef")
    >>> urls.url("cats/tom.jpg", w=300, fit="cover", fm="webp")
    'https://img.example.com/img/cats/tom.jpg?w=300&fit=cover&fm=webp&s=...'
    >>> urls.srcset("cats/tom.jpg", [320, 640, 1280], q=70)
    'https://img.example.com/img/cats/tom.jpg?w=320&q=70&s=... 320w, ...'

Options are the service's query parameters (`w`, `h`, `fit`, `g`, `fm`, `q`, ...); they are checked
against the service's own parser, so a typo fails here rather than as a 400 in production.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import quote, urlencode

from imgproxy.options import Limits, parse_options
from imgproxy.signing import sign

OptionValue = str | int | float | bool | Enum


def _text(value: OptionValue) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class ImageUrls:
    base: str = ""  # scheme and host of the service, e.g. "https://img.example.com"; "" for relative URLs
    key: str | None = None  # the first of the service's signing keys, when it has any
    limits: Limits = field(default_factory=Limits)

    def target(self, path: str, *, expires_in: int | None = None, **options: OptionValue | None) -> str:
        """The request target (`/img/...?...`), signed when a key is set."""
        items = [(name, _text(value)) for name, value in options.items() if value is not None]
        preset = [item for item in items if item[0] == "preset"]
        parse_options([item for item in items if item[0] != "preset"], self.limits)  # raises BadParameter
        target = "/img/" + quote(path.lstrip("/"), safe="/")
        if items:
            target += "?" + urlencode([*preset, *(i for i in items if i[0] != "preset")], safe=",")
        expires = int(time.time()) + expires_in if expires_in is not None else None
        if self.key is not None:
            return sign(target, self.key.encode(), expires)
        if expires is not None:
            target += ("&" if "?" in target else "?") + f"expires={expires}"
        return target

    def url(self, path: str, *, expires_in: int | None = None, **options: OptionValue | None) -> str:
        return self.base.rstrip("/") + self.target(path, expires_in=expires_in, **options)

    def srcset(
        self, path: str, widths: Iterable[int], *, expires_in: int | None = None, **options: OptionValue | None
    ) -> str:
        """A `srcset` value: one URL per width, each with its `w` descriptor."""
        return ", ".join(f"{self.url(path, expires_in=expires_in, w=width, **options)} {width}w" for width in widths)
