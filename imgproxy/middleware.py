"""One ASGI wrapper around every request: `nosniff`, metrics, and the access log line."""

from __future__ import annotations

import re
import time
from typing import Any

from imgproxy.logs import ACCESS
from imgproxy.metrics import Metrics

_SIGNATURE = re.compile(rb"(^|&)s=[^&]*")


def loggable_path(scope: dict[str, Any]) -> str:
    """The request path and query with the signature removed (it is a credential for that URL)."""
    query = _SIGNATURE.sub(b"", scope.get("query_string", b"")).lstrip(b"&")
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    return (path + (b"?" + query if query else b"")).decode("latin-1")


class ObservabilityMiddleware:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "headers": {}}

        async def send_and_observe(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
                seen["status"] = message["status"]
                seen["headers"] = {k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]}
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            self._record(scope, seen, time.perf_counter() - started)

    def _record(self, scope: Any, seen: dict[str, Any], elapsed: float) -> None:
        route = getattr(scope.get("route"), "path_format", "unmatched")  # "/img/{path}"
        status = seen["status"]
        headers = seen["headers"]
        self.metrics.requests.labels(route, scope["method"], str(status)).inc()
        self.metrics.duration.labels(route).observe(elapsed)
        if ACCESS.isEnabledFor(20):  # INFO: skip building the record when access logs are off
            ACCESS.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": loggable_path(scope),
                    "status": status,
                    "bytes": int(headers.get("content-length", 0) or 0),
                    "duration_ms": round(elapsed * 1000, 2),
                    "cache": headers.get("x-cache-tier", headers.get("x-cache", "").lower() or None),
                    "format": headers.get("content-type"),
                },
            )
