"""Responsive image markup: the `srcset` ladder, `<img>` and `<picture>` snippets with intrinsic sizes.

Two shapes, as front ends need them:
- fluid (no `w`): one candidate per ladder width up to the source's own width, `w` descriptors, and
  the `sizes` attribute the page gives;
- fixed (`w` given): `1x`, `2x`, `3x` candidates of that CSS width, each at a lower quality than the
  last (dense screens hide compression: the bytes of a 2x image stay close to those of a 1x one).
"""

from __future__ import annotations

import bisect
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

UrlFor = Callable[..., str]  # url_for(path, **options) -> URL (signed when the server has keys)

PICTURE_TYPES = (("avif", "image/avif"), ("webp", "image/webp"))
# The image options a candidate may carry: those that keep its width what its descriptor says
# (crop, h, rot, pad, trim and the like would not, so /srcset refuses them).
PASSED_ON = frozenset(
    {"fm", "q", "bg", "flip", "blur", "sharpen", "brightness", "contrast", "saturation", "grayscale", "radius"}
    | {"wm", "wm_g", "wm_o", "wm_s", "lossless", "colors", "progressive", "strip", "frame"}
)


@dataclass(frozen=True)
class Candidate:
    query: tuple[tuple[str, str], ...]  # the options of this candidate's URL
    width: int  # device pixels
    descriptor: str  # "640w" or "2x"

    def url(self, path: str, url_for: UrlFor, **override: str) -> str:
        return url_for(path, **{**dict(self.query), **override})


def snap_up(width: int, ladder: Sequence[int]) -> int:
    """The smallest ladder width at or above `width` (the top of the ladder past it)."""
    return ladder[min(bisect.bisect_left(ladder, width), len(ladder) - 1)]


def fluid_widths(intrinsic_width: int, widths: Sequence[int], ladder: Sequence[int]) -> list[int]:
    """Candidate widths snapped onto the cache ladder, never wider than the source itself."""
    snapped = {snap_up(w, ladder) for w in widths}
    fitting = {w for w in snapped if w <= intrinsic_width}
    # The full resolution too, as the largest ladder width the source holds (or the source's own).
    fitting.add(max([w for w in ladder if w <= intrinsic_width], default=intrinsic_width))
    return sorted(fitting)


def candidates(
    options: dict[str, str],
    intrinsic_width: int,
    *,
    width: int | None,
    widths: Sequence[int],
    ladder: Sequence[int],
    dpr_qualities: Sequence[int],
    snap: bool,
) -> list[Candidate]:
    """`snap`: the server snaps unsigned sizes to the ladder, so fixed candidates name ladder widths too."""
    if width is None:
        return [
            Candidate(tuple({**options, "w": str(w)}.items()), w, f"{w}w")
            for w in fluid_widths(intrinsic_width, widths, ladder)
        ]
    fixed = []
    for dpr, quality in enumerate(dpr_qualities, start=1):
        device = snap_up(width * dpr, ladder) if snap else width * dpr
        if dpr > 1 and device > intrinsic_width:
            break  # denser than the source holds: the browser would get the same pixels, only worse
        query = {**options, "q": options.get("q", str(quality))}  # an explicit q always wins
        query.update({"w": str(device)} if snap or dpr == 1 else {"w": str(width), "dpr": str(dpr)})
        fixed.append(Candidate(tuple(query.items()), device, f"{dpr}x"))
    return fixed


def describe(
    path: str,
    intrinsic: tuple[int, int],
    chosen: list[Candidate],
    url_for: UrlFor,
    *,
    sizes: str | None,
    fixed_width: int | None,
    alt: str,
) -> dict[str, Any]:
    """The JSON answer of `/srcset`: candidates, the ready attributes and snippets."""
    urls = [c.url(path, url_for) for c in chosen]
    srcset = ", ".join(f"{url} {c.descriptor}" for url, c in zip(urls, chosen, strict=True))
    ratio = Fraction(intrinsic[0], intrinsic[1])
    display_w = fixed_width or chosen[-1].width
    display_h = max(1, round(display_w / ratio))
    sizes_attr = (sizes or "100vw") if fixed_width is None else None
    fallback = urls[0] if fixed_width is not None else urls[len(urls) // 2]
    img = _tag(
        "img",
        src=fallback,
        srcset=srcset,
        sizes=sizes_attr,
        width=str(display_w),
        height=str(display_h),
        alt=alt,
        loading="lazy",
        decoding="async",
    )
    explicit = dict(chosen[0].query).get("fm", "auto") != "auto"  # one format asked for: no alternatives
    sources = [
        _tag(
            "source",
            type=media_type,
            srcset=", ".join(f"{c.url(path, url_for, fm=fmt)} {c.descriptor}" for c in chosen),
            sizes=sizes_attr,
        )
        for fmt, media_type in ([] if explicit else PICTURE_TYPES)
    ]
    return {
        "intrinsic": {"width": intrinsic[0], "height": intrinsic[1]},
        "aspect_ratio": f"{ratio.numerator}/{ratio.denominator}",
        "candidates": [
            {"url": url, "width": c.width, "descriptor": c.descriptor} for url, c in zip(urls, chosen, strict=True)
        ],
        "src": fallback,
        "srcset": srcset,
        "sizes": sizes_attr,
        "width": display_w,
        "height": display_h,
        "html": {"img": img, "picture": "<picture>" + "".join(sources) + img + "</picture>"},
    }


def _tag(name: str, **attributes: str | None) -> str:
    rendered = " ".join(
        f'{key}="{html.escape(value, quote=True)}"' for key, value in attributes.items() if value is not None
    )
    return f"<{name} {rendered}>"
