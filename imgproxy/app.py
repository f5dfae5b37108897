"""The application factory: `uvicorn --factory imgproxy.app:create_app`. Nothing happens at import."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from imgproxy import __version__, logs
from imgproxy.errors import BadParameter, ImageProxyError
from imgproxy.hotpath import KnownRequestMiddleware
from imgproxy.metrics import Metrics
from imgproxy.middleware import ObservabilityMiddleware
from imgproxy.playground import build_playground
from imgproxy.responses import ProblemResponse, problem
from imgproxy.routes import build_router
from imgproxy.service import ImageService
from imgproxy.settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    logs.configure(settings.log.level, settings.log.format)
    metrics = Metrics()
    service = ImageService(settings, metrics)

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
    app.router.redirect_slashes = False  # a redirect would build its Location from the client's Host header
    app.state.service = service
    router = build_router(service)
    app.include_router(router)
    if settings.http.playground:
        app.include_router(build_playground(service))
    image_route = next(r for r in router.routes if getattr(r, "path_format", "") == "/img/{path}")
    app.add_middleware(KnownRequestMiddleware, service=service, route=image_route)  # inside the next one
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)

    @app.exception_handler(ImageProxyError)
    async def image_proxy_error(request: Request, exc: ImageProxyError) -> Response:
        return problem(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return problem(BadParameter("request", "malformed request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        body = {"type": "about:blank", "title": str(exc.detail), "status": exc.status_code, "detail": str(exc.detail)}
        headers = {"Cache-Control": "no-store", **(exc.headers or {})}
        if exc.status_code == 405:  # GET and HEAD are separate routes: list every method the path has
            headers["Allow"] = ", ".join(allowed_methods(router.routes, request)) or headers.get("Allow", "")
        return ProblemResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Runs in the outermost middleware, outside ObservabilityMiddleware: set the header here too.
        logs.ERRORS.error("unhandled error on %s", request.url.path, exc_info=exc)
        body = {"type": "about:blank", "title": "Internal Server Error", "status": 500, "detail": "unexpected error"}
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        return ProblemResponse(body, status_code=500, headers=headers)

    return app


def allowed_methods(routes: Sequence[BaseRoute], request: Request) -> list[str]:
    methods = {
        method
        for route in routes
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE
        for method in route.methods or ()
    }
    return sorted(methods)
