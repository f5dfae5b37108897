"""Bounded image work: a fixed pool of render threads, a bounded waiting queue, and a deadline.

Pillow releases the GIL while it decodes, resamples and encodes, so threads give real parallelism.
A full queue answers 503 at once instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

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
        self._pending = 0  # running + waiting; a timed-out render keeps its slot until its thread ends

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

        future = asyncio.get_running_loop().run_in_executor(self._executor, timed)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            # The thread cannot be stopped; the decode budgets checked before it started bound its cost.
            raise RenderTimeout(f"the render took longer than {self.timeout:g} s") from None

    def _report(self) -> None:
        if self._observe is not None:
            self._observe(self.running, self.queued)

    def _release(self, future: asyncio.Future[tuple[T, dict[str, float]]]) -> None:
        self._pending -= 1
        self._report()
        if not future.cancelled():
            future.exception()  # retrieved here, so an error after a timeout is not reported as lost

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
