"""Signed URLs: `s` = base64url(HMAC-SHA256(key, target)) without padding, as the last parameter.

The signed message is the request target exactly as sent, up to the `?s=` or `&s=` that starts the
signature: the raw path, and `?` plus the parameters before it if there are any. Every configured key
verifies (so keys can be rotated); the first one signs. An optional `expires` (unix seconds) among the
signed parameters ends the URL's validity.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from imgproxy.errors import BadParameter, Forbidden


def signature(key: bytes, message: bytes) -> str:
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign(target: str, key: bytes, expires: int | None = None) -> str:
    """Append `expires` (if given) and the signature to a request target such as `/img/cat.jpg?w=300`."""
    if expires is not None:
        target += ("&" if "?" in target else "?") + f"expires={expires}"
    return target + ("&" if "?" in target else "?") + "s=" + signature(key, target.encode())


def split_signature(raw_path: bytes, query: bytes) -> tuple[bytes, str | None]:
    """(signed message, signature) of a request; the signature is None when `s` is not the last parameter."""
    if query.startswith(b"s="):
        message, sig = raw_path, query[2:]
    elif b"&s=" in query:
        at = query.rindex(b"&s=")
        message, sig = raw_path + b"?" + query[:at], query[at + 3 :]
    else:
        return raw_path + (b"?" + query if query else b""), None
    if b"&" in sig:
        return message, None
    return message, sig.decode("ascii", "replace")


def verify(raw_path: bytes, query: bytes, keys: Sequence[bytes]) -> bool:
    """Check the signature when keys are configured (403 otherwise); True when the request was signed."""
    if not keys:
        return False
    message, sig = split_signature(raw_path, query)
    if sig is None:
        raise Forbidden("this server only serves signed URLs: the s parameter is missing or not last")
    # compare_digest over every key, so timing reveals neither the signature nor which key matched.
    matches = [hmac.compare_digest(signature(key, message).encode(), sig.encode()) for key in keys]
    if not any(matches):
        raise Forbidden("the signature does not match")
    return True


def check_expiry(expires: str | None, now: float) -> None:
    if expires is None:
        return
    if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
        raise BadParameter("expires", "must be a unix time in seconds")
    if int(expires) <= now:
        raise Forbidden("the URL has expired")
