"""The server backend: one long-lived client over one or more endpoints (TGI, vLLM, SGLang, llama.cpp,
`transformers serve`, Inference Endpoints), retries, adaptive concurrency and failure accounting.

Event loops. HTTP clients are bound to the loop that made them, so the backend keeps one pooled
HTTP client (`http_pool.PooledClient`) per endpoint *per event loop*, made lazily the first time a request runs on that
loop and reused for the backend's lifetime:

- `await agenerate_one(...)` runs on the caller's loop (the generation engine's): call it concurrently
  as often as you like; `max_in_flight` bounds what is really sent. Close with `await aclose()` on that
  loop before it ends (or `close()` afterwards: the connections are then dropped, not shut cleanly).
- `generate(...)` (synchronous, a batch in order) runs on a loop the backend owns on a background
  thread, started on first use and stopped by `close()`; it works from inside a running loop too.

Throughput comes from many requests in flight: the servers batch them. Each endpoint has an adaptive
limit (`concurrency.AdaptiveLimit`); the scheduler keeps the total under `max_in_flight` and shares the
load by measured speed. A request retries transient failures on another endpoint when there is one,
with jittered exponential backoff that honours Retry-After; when its retries run out it raises
`RequestFailed`. An endpoint that fails `fail_threshold` attempts in a row rests for `cooldown` seconds; then
one health probe (a one-token request) decides whether rows go to it again. When every endpoint's probe has
failed, every request raises `BackendUnavailable`: a server that is down is given up on one cool-down and one
probe after its failures began (plus the request `timeout` when it hangs instead of refusing).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from unicorn_datasets.generation.base import (
    BackendUnavailable,
    GenerationRequest,
    GenerationResult,
    RequestFailed,
    SamplingParams,
)
from unicorn_datasets.generation.server.dialects import Fatal, Retryable, classified, probe, reported_models, send
from unicorn_datasets.generation.server.endpoints import Endpoint, make_endpoint
from unicorn_datasets.generation.server.health import RESUME, ensure_recovered, ping, unavailable_message
from unicorn_datasets.generation.server.http_pool import PooledClient
from unicorn_datasets.generation.server.scheduler import Scheduler

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Session:
    """The HTTP clients of one event loop, one per endpoint."""

    def __init__(self, backend: ServerBackend, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.http: dict[str, PooledClient] = {}
        self.probe_locks = {ep.url: asyncio.Lock() for ep in backend.endpoints}
        b = backend
        for ep in b.endpoints:
            self.http[ep.url] = PooledClient(b.max_in_flight, timeout=b.timeout, connect_timeout=b.connect_timeout,
                                             token=ep.token)

    async def aclose(self) -> None:
        for http in self.http.values():
            await http.aclose()


class _LoopThread:
    """An event loop running forever on a daemon thread: the home of the synchronous `generate`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="unicorn-server-backend", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:  # Ctrl-C in the waiting thread: the coroutine must not run on unseen
            fut.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class ServerBackend:
    """Many requests in flight over one or more endpoints; `generate` returns results in input order."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        model: str | None = None,
        max_in_flight: int = 64,
        timeout: float = 300.0,
        max_retries: int = 5,
        chat: bool = True,
        token: str | None = None,
        server_kind: str | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        connect_timeout: float = 10.0,
        fail_threshold: int = 3,
        cooldown: float = 10.0,
    ) -> None:
        if timeout is None or timeout <= 0:
            raise ValueError("timeout must be positive seconds (the client default is to wait forever)")
        self.model = model
        self.max_in_flight = max(1, int(max_in_flight))
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_retries = max(0, int(max_retries))
        self.supports_chat = bool(chat)
        self.server_kind = server_kind
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.fail_threshold, self.cooldown = max(1, int(fail_threshold)), float(cooldown)
        self.endpoints: list[Endpoint] = [make_endpoint(str(raw), token=token, max_limit=self.max_in_flight)
                                          for raw in endpoints if str(raw).strip()]
        if not self.endpoints:
            raise ValueError("ServerBackend needs at least one endpoint URL")
        self.scheduler = Scheduler(self.endpoints, self.max_in_flight)
        self._sessions: dict[asyncio.AbstractEventLoop, _Session] = {}
        self._sessions_lock = threading.Lock()
        self._loop_thread: _LoopThread | None = None
        self._unavailable: BackendUnavailable | None = None
        self.requests_failed = 0  # requests that raised RequestFailed
        self.retries = 0  # attempts beyond each request's first

    # ---- public API -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        if any(ep.kind is None for ep in self.endpoints):
            try:
                self._run(self._probe_all())
            except Exception as e:  # provenance is best-effort; generation reports real errors
                logger.warning("could not probe the servers: %s", type(e).__name__)
        reported = next((m for ep in self.endpoints for m in reported_models(ep)), None)
        return {
            "backend": "server",
            "model": self.model or reported,
            "mode": "chat" if self.supports_chat else "completion",
            "endpoints": [ep.url for ep in self.endpoints],
            "servers": [{"endpoint": ep.url, "kind": ep.kind, **ep.info} for ep in self.endpoints],
        }

    def check_available(self) -> None:
        """Probes every endpoint and asks each for one token; raises BackendUnavailable naming each one
        if none answers (a server can list its models and still refuse every generation)."""
        errors = self._run(self._check_all())
        if len(errors) == len(self.endpoints):
            raise BackendUnavailable(f"{unavailable_message(self.endpoints, errors)}; {RESUME}")
        with self.scheduler.lock:
            for ep in self.endpoints:
                if ep.url not in errors:
                    ep.recovered()
        self._unavailable = None

    def stats(self) -> dict[str, Any]:
        """Counters for progress and the build summary (a snapshot; cheap enough to call every second)."""
        now = time.monotonic()
        with self.scheduler.lock:
            per_endpoint = [ep.stats(now) for ep in self.endpoints]
            in_flight = self.scheduler.in_flight
        return {
            "in_flight": in_flight,
            "max_in_flight": self.max_in_flight,
            "served": sum(e["served"] for e in per_endpoint),
            "failed_attempts": sum(e["failed"] for e in per_endpoint),
            "retries": self.retries,
            "requests_failed": self.requests_failed,
            "endpoints": per_endpoint,
        }

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        """A batch, in order. The first request that fails for good cancels the others and is raised."""
        if not requests:
            return []
        return self._run(self._generate_all(requests, params))

    async def agenerate_one(self, request: GenerationRequest, params: SamplingParams) -> GenerationResult:
        """One request on the running loop, retried on transient failures.

        `result.extra` carries `endpoint` (the one that answered), `attempts` (HTTP attempts made) and
        `errors` (each failed attempt, "URL -> error"). Raises RequestFailed when this request's
        retries run out or the server refuses it, BackendUnavailable when the backend is down.
        """
        if self._unavailable is not None:
            raise self._unavailable
        session = self._session()
        errors: list[str] = []
        avoid: Endpoint | None = None
        attempts = failures = 0
        while True:
            if self._unavailable is not None:
                raise self._unavailable
            ep, epoch, in_flight_at_send = await self.scheduler.acquire(avoid)
            started = time.monotonic()
            try:
                try:
                    if not await ensure_recovered(self, ep, session.http[ep.url], session.probe_locks[ep.url]):
                        avoid = ep  # its probe failed: the row goes elsewhere, or waits for the next probe
                        continue
                    await self._ensure_probed(ep, session)
                    attempts += 1
                    result = await send(ep, request, params, model=self.model, http=session.http[ep.url])
                finally:
                    self.scheduler.release(ep)  # before any backoff sleep: a waiting request gets the slot
            except Fatal as e:
                if e.dropped - ep.dropped:  # a strict server refused an optional field: resend without it
                    logger.warning("endpoint %s rejects %s: not sent to it again", ep.url, sorted(e.dropped))
                    ep.dropped |= e.dropped
                    continue
                detail = f": {e.message}" if e.message else ""
                self.requests_failed += 1
                raise RequestFailed(f"row {request.key!r}: endpoint {ep.url} answered {e.status}{detail}") from e
            except Retryable as e:
                errors.append(f"{ep.url} -> {e.status}")
                self._record_failure(ep, e, epoch)
                failures += 1
                avoid = ep
                if failures > self.max_retries:
                    self.requests_failed += 1
                    names = ", ".join(sorted({ep.url for ep in self.endpoints}))
                    raise RequestFailed(f"row {request.key!r}: all {failures} attempts failed (endpoints: {names}): "
                                        + "; ".join(errors)) from e
                self.retries += 1
                await asyncio.sleep(self._delay(failures - 1, e.retry_after))
                continue
            with self.scheduler.lock:
                ep.record_success(time.monotonic() - started, result.n_tokens, in_flight_at_send)
            result.extra.update(endpoint=ep.url, attempts=attempts, errors=errors)
            return result

    def close(self) -> None:
        """Closes every loop's HTTP clients and stops the background loop. Safe to call twice."""
        with self._sessions_lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        thread, self._loop_thread = self._loop_thread, None
        for s in sessions:
            if s.loop.is_closed():
                continue
            if thread is not None and s.loop is thread.loop:
                thread.run(s.aclose())
            elif _running_loop() is s.loop:
                s.loop.create_task(s.aclose())  # cannot block on our own loop: close in the background
            elif s.loop.is_running():
                asyncio.run_coroutine_threadsafe(s.aclose(), s.loop).result(timeout=10)
        if thread is not None:
            thread.stop()

    async def aclose(self) -> None:
        """Closes the running loop's HTTP clients (call before that loop ends)."""
        loop = asyncio.get_running_loop()
        with self._sessions_lock:
            session = self._sessions.pop(loop, None)
        if session is not None:
            await session.aclose()

    def __enter__(self) -> ServerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ServerBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        self.close()

    # ---- loops and sessions -----------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop_thread is None:
            self._loop_thread = _LoopThread()
        return self._loop_thread.run(coro)

    def _session(self) -> _Session:
        loop = asyncio.get_running_loop()
        with self._sessions_lock:
            session = self._sessions.get(loop)
            if session is None:
                for old in [lp for lp in self._sessions if lp.is_closed()]:  # loops that ended unclosed
                    del self._sessions[old]
                session = self._sessions[loop] = _Session(self, loop)
            return session

    async def _generate_all(self, requests: list[GenerationRequest],
                            params: SamplingParams) -> list[GenerationResult]:
        tasks = [asyncio.create_task(self.agenerate_one(r, params)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # One row failed for good: stop the others instead of letting them retry to exhaustion.
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # ---- failures ---------------------------------------------------------------------------------

    def _record_failure(self, ep: Endpoint, e: Retryable, epoch: int) -> None:
        counts_as_down = e.status != "HTTP 429"  # rate-limited is busy, not down
        with self.scheduler.lock:
            ep.record_failure(e.status, fail_threshold=self.fail_threshold, cooldown=self.cooldown,
                              counts_as_down=counts_as_down)
            if e.overload and ep.limit.on_overload(epoch):
                logger.info("endpoint %s: %s, concurrency limit lowered to %d", ep.url, e.status,
                            ep.limit.current)
        if self._unavailable is not None:
            raise self._unavailable

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        delay = random.uniform(delay / 2, delay)  # jitter: rows that failed together retry apart
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    # ---- probing ----------------------------------------------------------------------------------

    async def _probe_all(self, fresh: bool = False) -> dict[str, str]:
        """Probes every endpoint not probed yet (`fresh`: every one); returns {url: error} for those that
        did not answer."""
        session = self._session()
        errors: dict[str, str] = {}
        for ep in self.endpoints:
            if fresh:
                ep.kind = None
            try:
                await self._ensure_probed(ep, session)
            except (Retryable, Fatal) as e:
                ep.info = {"error": e.status}
                ep.last_error = errors[ep.url] = e.status
        return errors

    async def _check_all(self) -> dict[str, str]:
        """{url: error} for each endpoint whose probe or one-token generation failed (up to three tries: a blip)."""
        errors = await self._probe_all(fresh=True)
        session = self._session()
        for ep in self.endpoints:
            if ep.url in errors:
                continue
            error = await ping(self, ep, session.http[ep.url])
            if error is not None:
                ep.last_error = errors[ep.url] = error
        return errors

    async def _ensure_probed(self, ep: Endpoint, session: _Session) -> None:
        if ep.kind is not None:
            return
        async with session.probe_locks[ep.url]:  # one probe per endpoint, not one per in-flight row
            if ep.kind is None:
                await classified(probe(ep, session.http[ep.url], timeout=min(self.timeout, 10.0),
                                       server_kind=self.server_kind))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
