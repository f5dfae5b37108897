"""OpenAPI fragments for the image routes, generated from the parameter table in `options.py`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from imgproxy.options import PARAMS, Format, Limits
from imgproxy.settings import Settings
from imgproxy.srcset import PASSED_ON

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "URN naming the kind of problem"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "what went wrong, for people"},
        "param": {"type": "string", "description": "the offending query parameter (400 only)"},
    },
}


def query_parameters(limits: Limits, settings: Settings) -> list[dict[str, Any]]:
    """Every query parameter (aliases listed in the description) for `openapi_extra`."""
    parameters = [
        {
            "name": "preset",
            "in": "query",
            "required": False,
            "description": "A named option set from the server's settings; the request's own options override it.",
            "schema": {"type": "string", "enum": sorted(settings.presets)} if settings.presets else {"type": "string"},
        },
        {
            "name": "expires",
            "in": "query",
            "required": False,
            "description": "Unix time (seconds) after which the URL is refused with 403; sign it with the URL.",
            "schema": {"type": "integer", "minimum": 0},
        },
        {
            "name": "s",
            "in": "query",
            "required": bool(settings.security.signing_keys),
            "description": "Signature: base64url(HMAC-SHA256(key, request target up to `?s=`/`&s=`)), unpadded. "
            "Must be the last parameter.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
        },
    ]
    for param in PARAMS:
        aliases = f" Alias: `{'`, `'.join(param.aliases)}`." if param.aliases else ""
        parameters.append(
            {
                "name": param.name,
                "in": "query",
                "required": False,
                "description": param.description + aliases,
                "schema": param.schema(limits),
                "example": param.example,
            }
        )
    return parameters


class ImageFacts(BaseModel):
    """What `/meta` answers (also the JSON schema in the OpenAPI document)."""

    width: int = Field(description="after EXIF orientation")
    height: int = Field(description="after EXIF orientation")
    format: str = Field(description="the source's format: jpeg, png, webp, gif, avif, tiff, bmp, ico, heif")
    mode: str = Field(description="Pillow mode of the source, e.g. RGB, RGBA, P, CMYK, I;16")
    has_alpha: bool
    frames: int
    orientation: int = Field(ge=1, le=8, description="EXIF orientation tag, 1 when absent")
    icc: str | None = Field(description="embedded ICC profile description")
    bytes: int
    dominant_color: str = Field(pattern="^#[0-9a-f]{6}$")
    blurhash: str
    lqip: str = Field(description="a tiny WebP as a data: URI")


class SrcsetCandidate(BaseModel):
    url: str
    width: int = Field(description="device pixels")
    descriptor: str = Field(description="`640w` (fluid) or `2x` (fixed)")


class SrcsetAnswer(BaseModel):
    """What `/srcset` answers."""

    intrinsic: dict[str, int] = Field(description="the source's width and height after orientation")
    aspect_ratio: str = Field(description="reduced, e.g. 451/300")
    candidates: list[SrcsetCandidate]
    src: str
    srcset: str
    sizes: str | None
    width: int
    height: int
    html: dict[str, str] = Field(description="`img` and `picture` snippets with width and height set")


def srcset_parameters(limits: Limits, settings: Settings) -> list[dict[str, Any]]:
    own = [
        {
            "name": "w",
            "in": "query",
            "required": False,
            "description": "Fixed CSS width: answers 1x, 2x, 3x candidates with lower quality as density rises. "
            "Without it, the answer is a fluid ladder with `w` descriptors.",
            "schema": {"type": "integer", "minimum": 1, "maximum": limits.max_width // 3},
        },
        {
            "name": "widths",
            "in": "query",
            "required": False,
            "description": "Fluid candidate widths (comma-separated), snapped onto the cache ladder; "
            "default from IMGPROXY_SRCSET__WIDTHS.",
            "schema": {"type": "string", "pattern": "^[0-9]+(,[0-9]+){0,31}$"},
        },
        {
            "name": "sizes",
            "in": "query",
            "required": False,
            "description": "The `sizes` attribute for fluid images (default `100vw`).",
            "schema": {"type": "string"},
        },
        {"name": "alt", "in": "query", "required": False, "description": "Alt text.", "schema": {"type": "string"}},
    ]
    passed_on = [p for p in query_parameters(limits, settings) if p["name"] in PASSED_ON]
    signature = [p for p in query_parameters(limits, settings) if p["name"] == "s"]
    return own + passed_on + signature


def meta_responses() -> dict[int | str, dict[str, Any]]:
    return {
        304: {"description": "Not modified: `If-None-Match` matched the ETag."},
        400: _problem("An option was given: /meta takes none."),
        403: _problem("The signature is missing, wrong or expired, or the origin is not allowed."),
        404: _problem("No such source image."),
        413: _problem("The source is over the byte or pixel budget."),
        415: _problem("The source is not a decodable image."),
        502: _problem("The origin failed."),
        503: _problem("Overloaded; retry after `Retry-After`."),
        504: _problem("The origin did not answer in time."),
        **DEFAULT_PROBLEM,
    }


def url_parameter() -> dict[str, Any]:
    return {
        "name": "url",
        "in": "query",
        "required": True,
        "description": "Absolute http(s) URL of the source; its host must match the server's allow-list.",
        "schema": {"type": "string", "format": "uri"},
    }


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}}}


# Every route documents its other errors as problem documents (this also keeps FastAPI from claiming
# a 422 that the service never sends: it validates parameters itself and answers 400).
DEFAULT_PROBLEM: dict[int | str, dict[str, Any]] = {
    "default": _problem("Any other error (405, 500), as a problem document.")
}


def image_responses(limits: Limits, signed: bool) -> dict[int | str, dict[str, Any]]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    formats = [f for f in Format if f not in (Format.AUTO, Format.BLURHASH) and (limits.avif or f is not Format.AVIF)]
    formats = [f for f in formats if limits.heic or f is not Format.HEIC]
    header = {"schema": {"type": "string"}}
    responses: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "The transformed image, in the format requested or negotiated from `Accept`.",
            "content": {
                **{f.media_type: binary for f in formats},
                "text/plain": {"schema": {"type": "string", "description": "the BlurHash, for fm=blurhash"}},
            },
            "headers": {
                "ETag": {**header, "description": "derived from the resolved options and the source version"},
                "Cache-Control": header,
                "Vary": {**header, "description": "`Accept` when the format was negotiated"},
                "X-Cache": {**header, "description": "`HIT` or `MISS` in the result cache"},
                "Server-Timing": {**header, "description": "stage durations on a miss"},
            },
        },
        304: {"description": "Not modified: `If-None-Match` matched the ETag."},
        400: _problem("A parameter is unknown, repeated, malformed or out of range."),
        404: _problem("No such source image."),
        413: _problem("The source is over the byte or pixel budget."),
        415: _problem("The source is not a decodable image."),
        502: _problem("The origin failed: connection refused, an error status or too many redirects."),
        503: _problem("Overloaded or the render timed out; retry after `Retry-After`."),
        504: _problem("The origin did not answer within the fetch deadline."),
    }
    responses.update(DEFAULT_PROBLEM)
    responses[403] = _problem(
        "The signature is missing, wrong or expired, or the origin is not allowed."
        if signed
        else "The URL has expired, or the origin's host or address is not allowed."
    )
    return responses
