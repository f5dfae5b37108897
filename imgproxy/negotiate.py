"""`Accept` → a small format bucket, known before the source is opened.

The bucket (not the raw header) goes into the cache key and the ETag, so the thousands of distinct
`Accept` strings browsers send collapse to three cache entries per image.
"""

from __future__ import annotations

import re
from enum import StrEnum

from imgproxy.options import Format

_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?", re.ASCII)


class Bucket(StrEnum):
    AVIF = "avif"
    WEBP = "webp"
    LEGACY = "legacy"  # JPEG, or PNG when the image has alpha: decided after decoding


def accepted_types(accept: str) -> dict[str, float]:
    """Media types named in `Accept` with their q-values (the highest when a type repeats)."""
    types: dict[str, float] = {}
    for item in accept.split(",")[:64]:  # a header is attacker-controlled: bound the work
        media, _, params = item.partition(";")
        media = media.strip().lower()
        if not media:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                value = value.strip()
                # RFC 9110 qvalue syntax only: "inf", "1e0" or "nan" are malformed and do not count.
                q = float(value) if _QVALUE.fullmatch(value) else 0.0
        types[media] = max(q, types.get(media, 0.0))
    return types


def negotiate(accept: str | None, avif_enabled: bool) -> Bucket:
    """Pick the best bucket the client names explicitly; wildcards never name AVIF or WebP."""
    types = accepted_types(accept or "")
    if avif_enabled and types.get("image/avif", 0.0) > 0:
        return Bucket.AVIF
    if types.get("image/webp", 0.0) > 0:
        return Bucket.WEBP
    return Bucket.LEGACY


def output_format(requested: Format, bucket: Bucket) -> Format:
    """The format to encode to; `Format.AUTO` stays only for the legacy bucket (JPEG or PNG by alpha)."""
    if requested is not Format.AUTO:
        return requested
    return {Bucket.AVIF: Format.AVIF, Bucket.WEBP: Format.WEBP, Bucket.LEGACY: Format.AUTO}[bucket]
