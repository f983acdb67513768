"""Which endpoint a request goes to, and when: free capacity under each endpoint's adaptive limit and
under `max_in_flight` in total, shared by measured speed.

A request takes a slot on the endpoint where it is expected to finish first: the lowest
(in flight + 1) x latency (Little's law: an endpoint twice as fast takes twice the share of slots).
An endpoint never measured yet counts as the fastest known, so it gets tried. A request that finds no
free slot waits in FIFO order until a slot is released or a cooling endpoint comes back; waiting costs
nothing but its place in the caller's window.

The state is shared by every event loop that uses the backend (a threading lock guards it; waiters are
woken on their own loop), so the synchronous `generate` and an engine's loop may run side by side.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

from unicorn_datasets.generation.server.endpoints import Endpoint


class Scheduler:
    def __init__(self, endpoints: list[Endpoint], max_in_flight: int) -> None:
        self.endpoints = endpoints
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    async def acquire(self, avoid: Endpoint | None = None) -> tuple[Endpoint, int, int]:
        """Waits for a slot; returns (endpoint, its limit epoch, its in-flight count including this one)."""
        loop = asyncio.get_running_loop()
        while True:
            with self.lock:
                now = time.monotonic()
                ep = self._pick(avoid, now)
                if ep is not None:
                    ep.in_flight += 1
                    ep.picks += 1
                    self.in_flight += 1
                    return ep, ep.limit.epoch, ep.in_flight
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, fut))
                recover = [ep.down_until - now for ep in self.endpoints if ep.cooling(now)]
                # A cooling endpoint comes back without a release to wake us: look again by then.
                timeout = min(recover) if recover else None
            try:
                await asyncio.wait({fut}, timeout=timeout)
            except asyncio.CancelledError:
                with self.lock:
                    was_woken = not self._drop(loop, fut)
                if was_woken:
                    self._wake()  # we were handed a slot we will not use: pass it on
                raise
            with self.lock:
                self._drop(loop, fut)

    def release(self, ep: Endpoint) -> None:
        with self.lock:
            ep.in_flight -= 1
            self.in_flight -= 1
        self._wake()

    def _pick(self, avoid: Endpoint | None, now: float) -> Endpoint | None:
        if self.in_flight >= self.max_in_flight:
            return None
        free = [ep for ep in self.endpoints if not ep.cooling(now) and ep.in_flight < ep.limit.current]
        if not free:
            return None
        if avoid in free and len(free) > 1:
            free.remove(avoid)  # a retry goes elsewhere when it can
        known = [ep.latency for ep in self.endpoints if ep.latency is not None]
        unknown = min(known) if known else 1.0
        return min(free, key=lambda ep: ((ep.in_flight + 1) * (ep.latency if ep.latency is not None else unknown),
                                         ep.picks))

    def _free_slots(self, now: float) -> int:
        per_endpoint = sum(max(0, ep.limit.current - ep.in_flight) for ep in self.endpoints if not ep.cooling(now))
        return min(self.max_in_flight - self.in_flight, per_endpoint)

    def _wake(self) -> None:
        """Wakes as many waiters (oldest first) as there are free slots."""
        with self.lock:
            now = time.monotonic()
            n = self._free_slots(now)
            if n <= 0 and any(ep.cooling(now) for ep in self.endpoints):
                n = len(self._waiters)  # an endpoint went cooling: every waiter re-reads when to look again
            woken = []
            while n > 0 and self._waiters:
                woken.append(self._waiters.popleft())
                n -= 1
        for loop, fut in woken:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that loop is closed: its waiter is gone with it
                pass

    def _drop(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> bool:
        """Removes a waiter; False if it was already taken off the queue (woken)."""
        try:
            self._waiters.remove((loop, fut))
        except ValueError:
            return False
        return True


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
