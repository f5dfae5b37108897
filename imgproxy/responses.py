"""HTTP shapes: image responses, 304 as data, and RFC 9457 problem documents."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from fastapi.responses import JSONResponse
from starlette.responses import Response

from imgproxy.errors import ImageProxyError

# Headers a 304 keeps from the 200 it stands for (RFC 9110 §15.4.5).
NOT_MODIFIED_HEADERS = ("cache-control", "etag", "vary", "expires", "content-location")


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


def problem(error: ImageProxyError) -> ProblemResponse:
    return ProblemResponse(
        error.problem(), status_code=error.status, headers={"Cache-Control": "no-store", **error.headers}
    )


def etag_of(identity: str) -> str:
    """A strong ETag naming `identity` (a resolved cache key), known before any image work."""
    return '"' + hashlib.blake2b(identity.encode(), digest_size=16).hexdigest() + '"'


def is_not_modified(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def not_modified(headers: Mapping[str, str]) -> Response:
    return Response(status_code=304, headers={k: v for k, v in headers.items() if k.lower() in NOT_MODIFIED_HEADERS})


def image_response(content: bytes, media_type: str, headers: dict[str, str], head: bool) -> Response:
    """Bytes already in memory: one `Response` with its exact `Content-Length`, never chunked.

    HEAD carries the length of the body a GET would send, and no body.
    """
    if head:
        return Response(headers={**headers, "Content-Length": str(len(content))}, media_type=media_type)
    return Response(content=content, headers=headers, media_type=media_type)


def server_timing(timings: Mapping[str, float]) -> str:
    return ", ".join(f"{name};dur={value:.1f}" for name, value in timings.items())
