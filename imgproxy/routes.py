"""Thin HTTP handlers: read the request, call the service, shape the response."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import Receive

from imgproxy.disconnect import unless_gone
from imgproxy.errors import UnsupportedImage
from imgproxy.hints import ACCEPT_CH, DPR_HINTS, WIDTH_HINTS
from imgproxy.openapi import (
    ImageFacts,
    SrcsetAnswer,
    image_responses,
    meta_responses,
    query_parameters,
    srcset_parameters,
    url_parameter,
)
from imgproxy.responses import etag_of, image_response, is_not_modified, not_modified, server_timing
from imgproxy.service import ImageService, Result, Target
from imgproxy.service import Request as PreparedRequest
from imgproxy.sniff import SNIFF_BYTES, sniff_media_type
from imgproxy.sources.base import Located

HINT_HEADERS = frozenset(name.lower().encode() for name in (*WIDTH_HINTS, *DPR_HINTS))
NEGOTIATING_HEADERS = HINT_HEADERS | {b"accept", b"save-data"}
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def get_and_head(router: APIRouter, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """Route GET and HEAD to one endpoint, each with its own operation id (FastAPI's `get` refuses HEAD)."""

    def register(endpoint: Endpoint) -> Endpoint:
        for method in ("GET", "HEAD"):
            operation_id = f"{endpoint.__name__}_{method.lower()}"
            router.add_api_route(path, endpoint, methods=[method], operation_id=operation_id, **options)
        return endpoint

    return register


def build_router(service: ImageService) -> APIRouter:
    router = APIRouter()
    settings = service.settings
    cache_control = settings.http.cache_control
    responses = image_responses(service.limits, signed=bool(settings.security.signing_keys))
    parameters = query_parameters(service.limits, settings)
    responder = Responder(service)

    @get_and_head(
        router,
        "/img/{path:path}",
        response_class=Response,
        responses=responses,
        openapi_extra={"parameters": parameters},
        summary="Transform an image from the source",
    )
    async def image(path: str, request: Request) -> Response:
        """Resize, crop and convert the image at `path` (relative to the source root, origin or bucket)."""
        return await serve(request, path, remote=False)

    @get_and_head(
        router,
        "/img",
        response_class=Response,
        responses=responses,
        openapi_extra={"parameters": [url_parameter(), *parameters]},
        summary="Transform an image fetched from a URL",
        include_in_schema=bool(settings.source.allowed_hosts),
    )
    async def remote_image(request: Request) -> Response:
        """Fetch the image at `url` (its host must be on the allow-list), then transform it."""
        return await serve(request, "", remote=True)

    @get_and_head(
        router,
        "/meta/{path:path}",
        responses=meta_responses(),
        response_model=ImageFacts,
        summary="Describe an image from the source",
    )
    async def meta(path: str, request: Request) -> Response:
        """Dimensions, format, colour and placeholders (BlurHash, LQIP) of the image at `path`."""
        return await responder.respond(request, await service.prepare_meta(target_of(request, path, remote=False)))

    @get_and_head(
        router,
        "/meta",
        responses=meta_responses(),
        response_model=ImageFacts,
        openapi_extra={"parameters": [url_parameter()]},
        summary="Describe an image fetched from a URL",
        include_in_schema=bool(settings.source.allowed_hosts),
    )
    async def remote_meta(request: Request) -> Response:
        """Like `/meta/{path}`, for an absolute `url` whose host is on the allow-list."""
        return await responder.respond(request, await service.prepare_meta(target_of(request, "", remote=True)))

    @get_and_head(
        router,
        "/srcset/{path:path}",
        responses=meta_responses(),
        response_model=SrcsetAnswer,
        openapi_extra={"parameters": srcset_parameters(service.limits, settings)},
        summary="Responsive image candidates and markup for an image",
    )
    async def srcset(path: str, request: Request) -> Response:
        """A `srcset` ladder (fluid, `w` descriptors) or `1x/2x/3x` candidates for a fixed CSS width `w`,
        with the intrinsic size and ready `<img>`/`<picture>` snippets. URLs are signed when the server has
        keys (and then this request must be signed too)."""
        answer = await service.srcset(target_of(request, path, remote=False))
        return JSONResponse(answer, headers={"Cache-Control": cache_control})

    async def serve(request: Request, key: str, remote: bool) -> Response:
        prepared = await service.prepare(target_of(request, key, remote))
        if settings.http.passthrough and prepared.bare:
            return responder.original(prepared.source, request)
        return await responder.respond(request, prepared)

    add_operations_routes(router, service)
    return router


def add_operations_routes(router: APIRouter, service: ImageService) -> None:
    @get_and_head(router, "/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get_and_head(
        router,
        "/readyz",
        summary="Readiness: sources reachable where checkable, and not saturated",
        responses={503: {"description": "Not ready: a check failed (the body says which)."}},
    )
    async def readyz() -> Response:
        checks = await service.readiness()
        ready = all(check["ok"] for check in checks.values())
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})

    @get_and_head(
        router,
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


class Responder:
    """Shapes a prepared request into a response: 304, cached or rendered bytes, or the original file."""

    def __init__(self, service: ImageService) -> None:
        self.service = service
        self.cache_control = service.settings.http.cache_control
        self.client_hints = service.settings.http.client_hints

    def validators(self, prepared: PreparedRequest) -> dict[str, str]:
        """The headers known before the result: also all a 304 carries."""
        headers = {"ETag": prepared.key.etag, "Cache-Control": self.cache_control}
        if self.client_hints:
            headers["Accept-CH"] = ACCEPT_CH
        if prepared.vary:
            headers["Vary"] = ", ".join(prepared.vary)
        return headers

    @staticmethod
    def with_result(headers: dict[str, str], result: Result) -> dict[str, str]:
        headers.update(result.image.headers)
        headers["X-Cache"] = "MISS" if result.tier is None else "HIT"
        if result.tier is not None:
            headers["X-Cache-Tier"] = result.tier
        if result.timings:
            headers["Server-Timing"] = server_timing(result.timings)
        return headers

    async def respond(self, request: Request, prepared: PreparedRequest) -> Response:
        if_none_match = request.headers.get("if-none-match")
        return await self.answer(prepared, if_none_match, head=request.method == "HEAD", receive=request.receive)

    async def answer(
        self, prepared: PreparedRequest, if_none_match: str | None, *, head: bool, receive: Receive
    ) -> Response:
        """304 when the client has it; else the cached or rendered bytes (the wait for a render ends if
        the client leaves: `receive` tells)."""
        headers = self.validators(prepared)
        if is_not_modified(if_none_match, prepared.key.etag):
            return not_modified(headers)
        result = self.service.cached(prepared)
        if result is None:
            result = await unless_gone(self.service.missed(prepared), receive)
        headers = self.with_result(headers, result)
        return image_response(result.image.content, result.image.media_type, headers, head)

    def original(self, source: Located, request: Request) -> Response:
        """The untouched original; its type is sniffed from its bytes, never guessed from its name."""
        etag = etag_of(f"original:{source.identity}:{source.version}")
        headers = {"ETag": etag, "Cache-Control": self.cache_control}
        if is_not_modified(request.headers.get("if-none-match"), etag):
            return not_modified(headers)
        if source.path is None:  # a fetched original, already in memory
            data = source.read()
            media_type = sniff_media_type(data[:SNIFF_BYTES])
            if media_type is None:
                raise UnsupportedImage("the source is not an image in a supported format")
            return image_response(data, media_type, headers, request.method == "HEAD")
        with open(source.path, "rb") as handle:
            media_type = sniff_media_type(handle.read(SNIFF_BYTES))
        if media_type is None:
            raise UnsupportedImage("the source is not an image in a supported format")
        # FileResponse streams from disk and answers Range requests itself.
        return FileResponse(source.path, media_type=media_type, headers=headers, stat_result=source.path.stat())


def target_of(request: Request, key: str, remote: bool) -> Target:
    return target_from_scope(request.scope, key, remote, request.query_params.multi_items())


def target_from_scope(
    scope: MutableMapping[str, Any], key: str, remote: bool, query: Sequence[tuple[str, str]] = ()
) -> Target:
    """The request as the service sees it, read from the raw ASGI scope (the first of repeated headers)."""
    headers: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name == b"accept" and name in headers:  # repeated Accept headers mean one comma-joined list
            headers[name] += ", " + value.decode("latin-1")
        elif name in NEGOTIATING_HEADERS:
            headers.setdefault(name, value.decode("latin-1"))
    return Target(
        key=key,
        remote=remote,
        query=query,
        raw_path=scope.get("raw_path") or scope["path"].encode(),
        raw_query=scope.get("query_string", b""),
        accept=headers.get(b"accept"),
        save_data=headers.get(b"save-data", "").strip().lower() == "on",
        hints={name.decode(): value for name, value in headers.items() if name in HINT_HEADERS},
    )
