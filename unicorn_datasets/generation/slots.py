"""The engine's request slots: a fixed number, and a first attempt waiting for one goes before a retry.

Why an order: a rejected row retried at once takes its slot for a second round trip while new rows wait,
so a stage's last rows go out later and their own retries (a second latency each) make its tail. A retry
that waits behind new rows is sent when no new row waits (the engine bounds the rows open: at most its
retry backlog wait to retry), at the latest when the feed runs out, so retries fill the slots that open as
the stage drains. A retry waits `max_wait` seconds at most, so a part (which lands when its last row is
decided) is not held back for long. What a row holds does not change: a request depends on (row, attempt).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

Waiter = tuple[float, asyncio.Future[None]]  # (when it began to wait, woken with a slot)


class RequestSlots:
    """Like asyncio.Semaphore(n), with two queues of waiters: first attempts, then retries."""

    def __init__(self, n: int, max_wait: float = 10.0) -> None:
        self._free = n
        self.max_wait = max_wait
        self._first: deque[Waiter] = deque()
        self._retry: deque[Waiter] = deque()

    async def acquire(self, retry: bool = False) -> None:
        if self._free > 0:  # a released slot goes to a waiter directly, so a free slot means nobody waits
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._retry if retry else self._first).append((time.monotonic(), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot just as it was cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        overdue = self._retry and self._retry[0][0] <= time.monotonic() - self.max_wait
        for waiting in (self._retry, self._first) if overdue else (self._first, self._retry):
            while waiting:
                fut = waiting.popleft()[1]
                if not fut.done():  # a cancelled waiter's future is done: skip it
                    fut.set_result(None)
                    return
        self._free += 1

    @property
    def waiting(self) -> tuple[int, int]:
        """(first attempts, retries) waiting for a slot (cancelled waiters may still be counted)."""
        return len(self._first), len(self._retry)
