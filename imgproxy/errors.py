"""The error tree: every failure a client can cause carries its HTTP status and a public message.

    ImageProxyError            500-free base: status, title, problem type, public detail
    ├── BadParameter           400  a query parameter is unknown, repeated, malformed or out of range
    ├── Forbidden              403  signature missing, wrong or expired
    ├── SourceNotFound         404  no such source (also any path that escapes the root)
    ├── SourceTooLarge         413  over the byte, pixel or frame budget
    ├── UnsupportedImage       415  not a decodable image of an allowed format
    ├── OriginUnreachable      502  the origin failed: connection refused, 5xx, bad redirects
    ├── Overloaded             503  the waiting queue is full
    ├── RenderTimeout          503  a render ran past its deadline
    ├── OriginTimeout          504  the origin did not answer within the fetch deadline
    └── ClientGone             499  the client closed the connection first: logged, never sent

`detail` is written for clients: it never holds a filesystem path or a library's own message.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ImageProxyError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type(self) -> str:
        return f"urn:imgproxy:problem:{self.slug}"

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 body."""
        return {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail, **self.extra}


class BadParameter(ImageProxyError):
    status = 400
    title = "Bad parameter"
    slug = "bad-parameter"

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(f"{param}: {detail}", param=param)


class Forbidden(ImageProxyError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class SourceNotFound(ImageProxyError):
    status = 404
    title = "Source not found"
    slug = "not-found"


class SourceTooLarge(ImageProxyError):
    status = 413
    title = "Source too large"
    slug = "too-large"


class UnsupportedImage(ImageProxyError):
    status = 415
    title = "Unsupported image"
    slug = "unsupported-image"


class OriginUnreachable(ImageProxyError):
    status = 502
    title = "Origin failed"
    slug = "origin-failed"


class Overloaded(ImageProxyError):
    status = 503
    title = "Overloaded"
    slug = "overloaded"
    headers = {"Retry-After": "1"}


class RenderTimeout(ImageProxyError):
    status = 503
    title = "Render timed out"
    slug = "render-timeout"
    headers = {"Retry-After": "5"}


class OriginTimeout(ImageProxyError):
    status = 504
    title = "Origin timed out"
    slug = "origin-timeout"


class ClientGone(ImageProxyError):
    """Nobody reads this answer: it exists so logs and metrics count abandoned requests (nginx's 499)."""

    status = 499
    title = "Client closed request"
    slug = "client-gone"
