"""The fast path for repeated `/img` requests: no routing, no parameter parsing.

A request whose exact bytes (path, query, negotiating headers) were seen before has a remembered,
verified transform (see `ImageService.prepare`). Such a request goes straight to the service and the
responder, the same objects the route uses, so every rule still lives in one place: this only skips
FastAPI's routing and dependency handling, which is most of what a cache hit would otherwise cost.
First requests and untouched originals (passthrough) take the normal route.
"""

from __future__ import annotations

from typing import Any

from imgproxy.errors import ImageProxyError
from imgproxy.responses import problem
from imgproxy.routes import Responder, target_from_scope
from imgproxy.service import ImageService

PREFIX = "/img/"


class KnownRequestMiddleware:
    def __init__(self, app: Any, service: ImageService, route: Any) -> None:
        self.app = app
        self.service = service
        self.responder = Responder(service)
        self.route = route  # the /img/{path} route, so metrics and logs label these requests like any other
        self.passthrough = service.settings.http.passthrough

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        target = target_from_scope(scope, scope["path"][len(PREFIX) :], remote=False)  # no query: not needed
        transform = self.service.remembered(target)
        if transform is None or (self.passthrough and transform.bare):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        try:
            prepared = await self.service.prepare_known(target, transform)
            if_none_match = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"if-none-match"), None)
            head = scope["method"] == "HEAD"
            response = await self.responder.answer(prepared, if_none_match, head=head, receive=receive)
        except ImageProxyError as exc:
            response = problem(exc)
        await response(scope, receive, send)
