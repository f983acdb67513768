"""The fake server's HTTP/1.1 wire: buffered request reads, hang-up detection, JSON responses (stdlib only)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


class ClientGone(Exception):
    pass


class Conn:
    """Buffered reads of HTTP/1.1 requests from one connection."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buf = bytearray()

    async def fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise ClientGone
        self.buf += data

    async def read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        try:
            while b"\r\n\r\n" not in self.buf:
                await self.fill()
        except (ClientGone, ConnectionError):
            return None
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = (lines[0].split(" ") + ["", ""])[:3]
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        self.buf = bytearray(rest)
        try:
            while len(self.buf) < length:
                await self.fill()
        except (ClientGone, ConnectionError):
            return None
        body, self.buf = bytes(self.buf[:length]), self.buf[length:]
        return method, target, headers, body


async def wait_or_hangup(delay: float, conn: Conn) -> bool:
    """Sleep `delay` seconds; False as soon as the client closes the connection."""
    sleeper = asyncio.ensure_future(asyncio.sleep(delay))
    watcher = asyncio.ensure_future(conn.fill())
    try:
        while True:
            done, _ = await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if sleeper in done:
                return True
            if watcher.exception() is not None:
                return False
            watcher = asyncio.ensure_future(conn.fill())  # pipelined bytes: kept in the buffer, keep watching
    finally:
        for t in (sleeper, watcher):
            t.cancel()
        # wait until the watcher has really stopped: the connection's next read must be the only reader
        await asyncio.gather(sleeper, watcher, return_exceptions=True)


async def send_json(writer: asyncio.StreamWriter, status: int, obj: Any,
                     headers: dict[str, str] | None = None) -> bool:
    return await send(writer, status, json.dumps(obj).encode(), headers or {})


async def send(writer: asyncio.StreamWriter, status: int, data: bytes, headers: dict[str, str]) -> bool:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", "Content-Type: application/json",
            f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    await writer.drain()
    return True
