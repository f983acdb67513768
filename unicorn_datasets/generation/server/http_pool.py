"""The HTTP client of one endpoint on one event loop: an aiohttp session with a pool of keep-alive connections.

Chosen by measurement (bench/README.md, "A lean client"): per request, aiohttp spends a fraction of the
CPU httpx does. httpx's pool scans every pooled connection on each request and each response close
(`has_expired` calls `getpeername` per socket), so even spread over pools of 32 it cost ~2 ms of CPU
per request at K=256; aiohttp's connector hands out a free connection in O(1).

The answer is read whole and returned as a small `Response` (status, headers, body), so the dialects
never hold a connection open while they parse.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import aiohttp


class Response:
    """What the dialects read from an answer: `status_code`, `headers`, `text`, `json()`."""

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, status_code: int, headers: Any, body: bytes) -> None:
        self.status_code, self.headers, self.body = status_code, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)  # ValueError on a malformed body: the dialects classify it as retryable


class PooledClient:
    """`get`/`post`/`aclose` over one aiohttp session with up to `connections` connections (made on this loop)."""

    def __init__(self, connections: int, *, timeout: float, connect_timeout: float, token: str | None) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, connect_timeout))
        # Our own client, not huggingface_hub's: its hooks refuse every URL under HF_HUB_OFFLINE (local servers
        # included) and would send the saved Hugging Face token to any server. Only this endpoint's token is sent.
        headers = {"authorization": f"Bearer {token}"} if token else None
        connector = aiohttp.TCPConnector(limit=max(1, connections), limit_per_host=0)
        # Proxies from the environment only when some are set: reading them costs a thread hop per request.
        self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, headers=headers,
                                             trust_env=bool(urllib.request.getproxies()))

    async def _call(self, method: str, url: str, *, json_body: Any = None, timeout: float | None = None) -> Response:
        kw: dict[str, Any] = {}
        if json_body is not None:
            kw["data"] = json.dumps(json_body).encode()
            kw["headers"] = {"content-type": "application/json"}
        if timeout is not None:
            kw["timeout"] = aiohttp.ClientTimeout(total=timeout, sock_connect=self.timeout.sock_connect)
        async with self.session.request(method, url, **kw) as r:
            return Response(r.status, r.headers, await r.read())

    async def get(self, url: str, *, timeout: float | None = None) -> Response:
        return await self._call("GET", url, timeout=timeout)

    async def post(self, url: str, *, json: Any, timeout: float | None = None) -> Response:  # noqa: A002
        return await self._call("POST", url, json_body=json, timeout=timeout)

    @property
    def is_closed(self) -> bool:
        return self.session.closed

    async def aclose(self) -> None:
        await self.session.close()
