"""Client hints: `w=auto` and `dpr=auto` resolved from `Sec-CH-Width`/`Width` and `Sec-CH-DPR`/`DPR`.

Hint values are arbitrary numbers from the client, so a hinted width is always snapped to the cache
ladder. Browsers that send no hints (most, for cross-origin images) get a fallback width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from imgproxy.options import canonical
from imgproxy.srcset import snap_up

WIDTH_HINTS = ("Sec-CH-Width", "Width")
DPR_HINTS = ("Sec-CH-DPR", "DPR")
ACCEPT_CH = ", ".join((*DPR_HINTS, *WIDTH_HINTS))
_NUMBER = re.compile(r"[0-9]{1,5}(\.[0-9]{1,3})?")


def _hint(headers: Mapping[str, str], names: Sequence[str]) -> float | None:
    for name in names:
        value = headers.get(name.lower(), "").strip()
        if _NUMBER.fullmatch(value) and float(value) > 0:
            return float(value)
    return None


def resolve(
    items: list[tuple[str, str]], headers: Mapping[str, str], ladder: Sequence[int], fallback_width: int
) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """Replace `auto` sizes by hinted ones, in device pixels snapped up to the ladder (hint values are
    arbitrary: unsnapped, each would be a cache entry of its own); also return the hint headers used."""
    width_auto = any(canonical(n) == "w" and v == "auto" for n, v in items)
    dpr_auto = any(canonical(n) == "dpr" and v == "auto" for n, v in items)
    if not (width_auto or dpr_auto):
        return items, ()
    # `Width` is in physical pixels, so it already holds the density: with w=auto, dpr=auto is moot.
    dpr = 1.0 if width_auto else min(max(_hint(headers, DPR_HINTS) or 1.0, 1.0), 4.0)
    resolved: list[tuple[str, str]] = []
    for name, value in items:
        kind = canonical(name)
        if kind == "dpr" and value == "auto":
            continue  # folded into the sizes below
        if kind == "w" and value == "auto":
            width = _hint(headers, WIDTH_HINTS)
            resolved.append((name, str(snap_up(round(width) if width else fallback_width, ladder))))
        elif kind in ("w", "h") and dpr_auto and not width_auto and value.isascii() and value.isdigit():
            resolved.append((name, str(snap_up(round(int(value) * dpr), ladder))))
        else:
            resolved.append((name, value))
    used = (WIDTH_HINTS if width_auto else ()) + (DPR_HINTS if dpr_auto and not width_auto else ())
    return resolved, used
