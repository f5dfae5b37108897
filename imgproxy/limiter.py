"""Bounded image work: a fixed pool of render threads, a bounded waiting queue, and a deadline.

Pillow releases the GIL while it decodes, resamples and encodes, so threads give real parallelism.
A full queue answers 503 at once instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from imgproxy.errors import Overloaded, RenderTimeout

T = TypeVar("T")


class WorkLimiter:
    def __init__(
        self, workers: int, max_queue: int, timeout: float, observe: Callable[[int, int], object] | None = None
    ) -> None:
        self.workers = workers
        self._observe = observe
        self.max_queue = max_queue
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="render")
        self._pending = 0  # running + waiting; a timed-out running render keeps its slot until its thread ends

    @property
    def running(self) -> int:
        return min(self._pending, self.workers)

    @property
    def queued(self) -> int:
        return max(0, self._pending - self.workers)

    async def run(self, work: Callable[[], tuple[T, dict[str, float]]]) -> tuple[T, dict[str, float]]:
        """Run `work` (returning a result and its stage timings) in the pool; the wait for a thread is
        added to the timings as `queue`."""
        if self._pending >= self.workers + self.max_queue:
            raise Overloaded("too many images are being rendered; retry shortly")
        self._pending += 1
        self._report()
        submitted = time.perf_counter()

        def timed() -> tuple[T, dict[str, float]]:
            waited = (time.perf_counter() - submitted) * 1000
            result, timings = work()
            return result, {"queue": waited, **timings}

        loop = asyncio.get_running_loop()
        job = self._executor.submit(timed)
        job.add_done_callback(lambda _: _call_on(loop, self._release))
        future = asyncio.wrap_future(job)
        future.add_done_callback(unobserved)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            # A render still waiting for a thread is dropped; a running thread cannot be stopped, and
            # the decode budgets checked before it started bound its cost.
            job.cancel()
            raise RenderTimeout(f"the render took longer than {self.timeout:g} s") from None
        except asyncio.CancelledError:
            job.cancel()  # nobody waits for it any more (the client left): free its place in the queue
            raise

    def _report(self) -> None:
        if self._observe is not None:
            self._observe(self.running, self.queued)

    def _release(self) -> None:
        """A render ended or was dropped before it started: its slot is free (on the event loop)."""
        self._pending -= 1
        self._report()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """Run `callback` on `loop` from a render thread (or from `shutdown`, where the loop may be closed)."""
    with contextlib.suppress(RuntimeError):  # the loop has closed: the server is gone, and its counts too
        loop.call_soon_threadsafe(callback)


def unobserved(future: asyncio.Future[Any]) -> None:
    """A done callback for a future nobody may await any more (timed out, abandoned): its error is
    retrieved here, so asyncio does not report it as lost."""
    if not future.cancelled():
        future.exception()
