"""Several small httpx connection pools behind one object, so a window of hundreds costs O(1) per request.

httpx's pool scans every pooled connection on each request and each response close
(`has_expired` calls `getpeername` per socket), so one client with 256 connections spends most of
its CPU scanning; at 0.1 s latency the scan, not the server, set the pace (bench/README.md). Here
each client holds at most POOL_SIZE connections and a request goes to the least busy client.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2

POOL_SIZE = 32  # connections per httpx client: small enough that the per-request scan stays cheap


class ShardedClient:
    """`get`/`post`/`aclose` like an `httpx2.AsyncClient`, over ceil(connections / POOL_SIZE) of them."""

    def __init__(self, connections: int, *, timeout: httpx2.Timeout,
                 on_request: Callable[[httpx2.Request], Awaitable[None]]) -> None:
        n = max(1, math.ceil(connections / POOL_SIZE))
        per = math.ceil(connections / n)
        limits = httpx2.Limits(max_connections=per, max_keepalive_connections=per)
        ssl = httpx2.create_ssl_context()  # one for all: each costs ~20-50 ms of CPU to build
        self.clients = [httpx2.AsyncClient(timeout=timeout, limits=limits, follow_redirects=True, verify=ssl,
                                           event_hooks={"request": [on_request]}) for _ in range(n)]
        self.busy = [0] * n

    async def _call(self, method: str, url: str, **kw: Any) -> httpx2.Response:
        i = min(range(len(self.clients)), key=self.busy.__getitem__)
        self.busy[i] += 1
        try:
            return await self.clients[i].request(method, url, **kw)
        finally:
            self.busy[i] -= 1

    async def get(self, url: str, **kw: Any) -> httpx2.Response:
        return await self._call("GET", url, **kw)

    async def post(self, url: str, **kw: Any) -> httpx2.Response:
        return await self._call("POST", url, **kw)

    @property
    def is_closed(self) -> bool:
        return all(c.is_closed for c in self.clients)

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()
