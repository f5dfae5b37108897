"""Thin HTTP handlers: read the request, call the service, shape the response."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response

from imgproxy.errors import UnsupportedImage
from imgproxy.openapi import image_responses, query_parameters
from imgproxy.responses import image_response, is_not_modified, not_modified, server_timing
from imgproxy.service import ImageService
from imgproxy.sniff import SNIFF_BYTES, sniff_media_type
from imgproxy.sources.local import SourceFile


def build_router(service: ImageService) -> APIRouter:
    router = APIRouter()
    settings = service.settings
    cache_control = settings.http.cache_control

    @router.api_route(
        "/img/{path:path}",
        methods=["GET", "HEAD"],
        response_class=Response,
        responses=image_responses(service.limits),
        openapi_extra={"parameters": query_parameters(service.limits)},
        summary="Transform an image",
    )
    async def image(path: str, request: Request) -> Response:
        """Resize, crop and convert the image at `path` (relative to the source root)."""
        head = request.method == "HEAD"
        if settings.http.passthrough and not request.url.query:
            return original(service.source.locate(path), request, head)
        prepared = service.prepare(path, request.query_params.multi_items(), request.headers.get("accept"))
        headers = {"ETag": prepared.key.etag, "Cache-Control": cache_control}
        if prepared.negotiated:
            headers["Vary"] = "Accept"
        if is_not_modified(request.headers.get("if-none-match"), prepared.key.etag):
            return not_modified(headers)
        result = await service.get(prepared)
        headers["X-Cache"] = "HIT" if result.hit else "MISS"
        if result.timings:
            headers["Server-Timing"] = server_timing(result.timings)
        return image_response(result.image.content, result.image.media_type, headers, head)

    def original(source: SourceFile, request: Request, head: bool) -> Response:
        """The untouched file, with its own validators and Range support; its type is sniffed, not guessed."""
        media_type = sniff_media_type(service.source.head(source, SNIFF_BYTES))
        if media_type is None:
            raise UnsupportedImage("the source is not an image in a supported format")
        etag = (
            '"' + hashlib.blake2b(f"original:{source.key}:{source.version}".encode(), digest_size=16).hexdigest() + '"'
        )
        headers = {"ETag": etag, "Cache-Control": cache_control}
        if is_not_modified(request.headers.get("if-none-match"), etag):
            return not_modified(headers)
        return FileResponse(source.path, media_type=media_type, headers=headers, stat_result=source.path.stat())

    @router.api_route("/healthz", methods=["GET", "HEAD"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return router
