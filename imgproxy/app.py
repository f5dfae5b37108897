"""The application factory: `uvicorn --factory imgproxy.app:create_app`. Nothing happens at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from imgproxy import __version__
from imgproxy.errors import BadParameter, ImageProxyError
from imgproxy.responses import NoSniffMiddleware, ProblemResponse, problem
from imgproxy.routes import build_router
from imgproxy.service import ImageService
from imgproxy.settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    service = ImageService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.aclose()

    app = FastAPI(
        title="imgproxy",
        version=__version__,
        summary="On-the-fly image transformation: resize, crop, convert, negotiate, cache.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(build_router(service))
    app.add_middleware(NoSniffMiddleware)

    @app.exception_handler(ImageProxyError)
    async def image_proxy_error(request: Request, exc: ImageProxyError) -> Response:
        return problem(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return problem(BadParameter("request", "malformed request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        body = {"type": "about:blank", "title": str(exc.detail), "status": exc.status_code, "detail": str(exc.detail)}
        return ProblemResponse(
            body, status_code=exc.status_code, headers={"Cache-Control": "no-store", **(exc.headers or {})}
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        body = {"type": "about:blank", "title": "Internal Server Error", "status": 500, "detail": "unexpected error"}
        return ProblemResponse(body, status_code=500, headers={"Cache-Control": "no-store"})

    return app
