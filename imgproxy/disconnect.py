"""Stop waiting for a render once the client has gone.

An abandoned request (a page scrolled past, a CDN or load generator that gave up) would otherwise
keep its place in the render queue, and a burst of them fills the queue with work nobody reads, so
the clients still there get 503s. Only the wait for a render is watched: a cache hit is answered
before a disconnect could matter, and watching it would cost two tasks per hit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from imgproxy.errors import ClientGone
from imgproxy.limiter import unobserved

T = TypeVar("T")


async def unless_gone(work: Awaitable[T], receive: Any) -> T:
    """`work`'s result, or `ClientGone` as soon as the connection closes first; `work` is then
    cancelled (a render still queued is dropped, see `WorkLimiter.run`).

    `receive` is the request's ASGI receive: GET and HEAD have no body the application reads, so
    every message until `http.disconnect` is only the (empty) request being drained."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this request itself is cancelled (server shutdown)
        watch.cancel()
        if not task.done():
            task.cancel()
            task.add_done_callback(unobserved)
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientGone("the client closed the connection before the image was ready")


async def _disconnected(receive: Any) -> None:
    """Return when the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body", False):
            break  # the whole (empty) body has arrived
    if (await receive())["type"] != "http.disconnect":  # an ASGI server waits here until the client leaves
        await asyncio.Event().wait()  # one that repeats the request breaks the protocol: stop listening
