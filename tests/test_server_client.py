"""The server client against the fake OpenAI server with injected faults: what the generation engine
relies on (agenerate_one, RequestFailed, BackendUnavailable, adaptive concurrency, load by speed,
one long-lived HTTP client). Assertions are on the server's counters, never on time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from unicorn_datasets.generation.base import (
    AsyncBackend,
    BackendUnavailable,
    GenerationRequest,
    GenerationResult,
    RequestFailed,
    SamplingParams,
)
from unicorn_datasets.generation.server import ServerBackend
from unicorn_datasets.testing.fake_openai_server import FAULTS, FakeServer, serve

FAST = {"backoff": 0.01, "max_backoff": 0.05, "cooldown": 0.2}  # keep retry sleeps tiny
PARAMS = SamplingParams(max_new_tokens=64)
NO_FAULTS = {name: 0.0 for name in FAULTS}


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there: connection refused


def _requests(n: int, tag: str) -> list[GenerationRequest]:
    return [GenerationRequest(key=f"{tag}-{i}", seed=i,
                              messages=[{"role": "user", "content": f"Describe a photo of a {tag} number {i}."}])
            for i in range(n)]


async def _run_all(backend: ServerBackend, reqs: list[GenerationRequest]) -> list[Any]:
    """What the engine does: every request awaited concurrently on the caller's loop."""
    try:
        return await asyncio.gather(*(backend.agenerate_one(r, PARAMS) for r in reqs), return_exceptions=True)
    finally:
        await backend.aclose()


@pytest.fixture(scope="module")
def quick() -> Iterator[FakeServer]:
    """Answers in ~10 ms; each test configures its own faults."""
    with serve(median=0.01, p99=0.03, hang_seconds=30.0, retry_after=0.05) as server:
        yield server


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_ends_in_a_result_or_request_failed(quick: FakeServer, fault: str) -> None:
    quick.configure(**{**NO_FAULTS, fault: 0.3})
    quick.reset()
    backend = ServerBackend([quick.url], max_in_flight=8, timeout=0.5, max_retries=4, **FAST)
    assert isinstance(backend, AsyncBackend)
    out = asyncio.run(_run_all(backend, _requests(40, fault)))
    backend.close()
    assert all(isinstance(o, (GenerationResult, RequestFailed)) for o in out), [type(o) for o in out]
    results = [o for o in out if isinstance(o, GenerationResult)]
    assert len(results) >= 36  # 0.3 ** 5: a request failing every attempt is rare
    for o in out:
        if isinstance(o, RequestFailed):
            assert o.reason == "server_error" and quick.url in o.error and "\n" not in o.error
    stats = quick.stats()
    assert stats["failed"].get(fault, 0) > 0  # the fault really happened
    if fault == "empty":  # a 200 with no text is an answer: the stage's validator rejects it, not the client
        assert any(r.text == "" for r in results) and all(r.extra["attempts"] == 1 for r in results)
    else:
        retried = [r for r in results if r.extra["attempts"] > 1]
        assert retried and all(r.text for r in results)
        assert all(len(r.extra["errors"]) == r.extra["attempts"] - 1 for r in results)
        assert sum(r.extra["attempts"] for r in results) <= sum(stats["received"].values())
    assert {r.extra["endpoint"] for r in results} == {quick.url}


def test_retries_exhausted_raise_request_failed_with_last_error(quick: FakeServer) -> None:
    quick.configure(**{**NO_FAULTS, "error_500": 1.0})
    # fail_threshold above the attempts made: the endpoint never rests, so no probe can declare it down
    backend = ServerBackend([quick.url], max_in_flight=2, timeout=2, max_retries=2, fail_threshold=100, **FAST)
    out = asyncio.run(_run_all(backend, _requests(3, "always500")))
    backend.close()
    assert all(isinstance(o, RequestFailed) for o in out)
    assert f"{quick.url} -> HTTP 500" in out[0].error and "all 3 attempts failed" in out[0].error
    assert backend.stats()["requests_failed"] == 3


def test_window_reaches_max_in_flight_on_a_parallel_server() -> None:
    with serve(median=0.2, p99=0.4) as server:
        # 80: more than one small httpx pool (http_pool.POOL_SIZE) must carry the window together
        backend = ServerBackend([server.url], max_in_flight=80, timeout=10, **FAST)
        out = asyncio.run(_run_all(backend, _requests(320, "window")))
        backend.close()
        assert all(isinstance(o, GenerationResult) for o in out)
        stats = server.stats()
    assert stats["max_in_flight"] == 80  # the whole window, and never more
    assert backend.stats()["served"] == 320 and backend.stats()["in_flight"] == 0


def test_limit_halves_under_429_and_recovers(quick: FakeServer) -> None:
    quick.configure(**{**NO_FAULTS, "error_429": 0.5})
    backend = ServerBackend([quick.url], max_in_flight=16, timeout=5, max_retries=10, **FAST)
    limit = backend.endpoints[0].limit
    seen: list[int] = []

    async def overloaded() -> list[Any]:
        async def watch() -> None:
            while True:
                seen.append(backend.stats()["endpoints"][0]["limit"])
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        try:
            return await _run_all(backend, _requests(100, "busy"))
        finally:
            watcher.cancel()

    out = asyncio.run(overloaded())
    assert all(isinstance(o, GenerationResult) for o in out)
    assert limit.decreases >= 2 and min(seen) <= 4  # halved, more than once
    low = limit.current
    quick.configure(**NO_FAULTS)
    asyncio.run(_run_all(backend, _requests(150, "calm")))
    backend.close()
    assert limit.current > low and limit.current >= 12  # grew back while nothing pushed back
    assert backend.endpoints[0].down_until == 0.0  # 429 means busy, not down: never skipped


def test_two_endpoints_share_by_speed() -> None:
    with serve(median=0.02, p99=0.04) as fast, serve(median=0.2, p99=0.4) as slow:
        backend = ServerBackend([slow.url, fast.url], max_in_flight=8, timeout=10, **FAST)
        out = asyncio.run(_run_all(backend, _requests(200, "share")))
        backend.close()
        assert all(isinstance(o, GenerationResult) for o in out)
        by_url = {e["url"]: e for e in backend.stats()["endpoints"]}
        served_fast, served_slow = by_url[fast.url]["served"], by_url[slow.url]["served"]
        assert served_fast + served_slow == 200 and served_slow > 0  # both used
        assert served_fast >= 3 * served_slow  # a 10x faster endpoint takes most of the load
        assert by_url[fast.url]["latency_ewma_s"] < by_url[slow.url]["latency_ewma_s"]


def test_check_available_names_every_endpoint_when_all_are_down() -> None:
    dead = [_dead_url(), _dead_url()]
    backend = ServerBackend(dead, timeout=2, **FAST)
    with pytest.raises(BackendUnavailable) as err:
        backend.check_available()
    backend.close()
    msg = str(err.value)
    assert msg.startswith("all 2 endpoint(s) failing: ") and "\n" not in msg
    assert all(f"{url} -> connection error" in msg for url in dead)


def test_check_available_passes_when_one_endpoint_answers(quick: FakeServer) -> None:
    with ServerBackend([_dead_url(), quick.url], timeout=2, **FAST) as backend:
        backend.check_available()
        assert backend.endpoints[1].kind == "openai" and backend.endpoints[0].kind is None


def test_persistent_failure_raises_backend_unavailable_then_recovers(quick: FakeServer) -> None:
    quick.configure(**{**NO_FAULTS, "down": "503"})
    dead = _dead_url()
    backend = ServerBackend([quick.url, dead], max_in_flight=4, timeout=2, max_retries=100,
                            **{**FAST, "cooldown": 0.05})
    out = asyncio.run(_run_all(backend, _requests(12, "down")))
    assert all(isinstance(o, BackendUnavailable) for o in out)  # no row burns 100 retries
    msg = str(out[0])
    assert msg.startswith("all 2 endpoint(s) failing: ") and "\n" not in msg
    assert f"{quick.url} -> HTTP 503" in msg and f"{dead} -> connection error" in msg
    quick.configure(down="")
    backend.check_available()  # the server is back: the backend answers again
    [res] = asyncio.run(_run_all(backend, _requests(1, "back")))
    backend.close()
    assert isinstance(res, GenerationResult) and res.extra["endpoint"] == quick.url


def test_one_http_client_per_loop_reused_and_closed(quick: FakeServer) -> None:
    quick.configure(**NO_FAULTS)
    backend = ServerBackend([quick.url], max_in_flight=4, timeout=5, **FAST)
    backend.generate(_requests(3, "first"), PARAMS)
    [session] = backend._sessions.values()
    http = session.http[quick.url]
    backend.generate(_requests(3, "second"), PARAMS)
    assert list(backend._sessions.values()) == [session] and session.http[quick.url] is http
    assert backend.stats()["served"] == 6
    backend.close()
    assert http.is_closed and not backend._sessions
    backend.close()  # twice is fine


def test_adaptive_limit_reads_medians_not_tails_and_counts_a_burst_once() -> None:
    from unicorn_datasets.generation.server.concurrency import AdaptiveLimit

    limit = AdaptiveLimit(64, min_window=32)
    heavy_tail = [0.01] * 28 + [0.5] * 4  # a few answers 50x slower than the rest: not congestion
    for _ in range(4):
        for s in heavy_tail:
            limit.on_success(s, in_flight=64)
    assert limit.decreases == 0 and limit.current == 64
    for _ in range(64):  # every answer 5x slower than the best window: the server is queueing
        limit.on_success(0.05, in_flight=64)
    assert limit.decreases == 1 and limit.current == 32
    for _ in range(96):  # still 5x after the cut: the work got heavier, so that is the new baseline
        limit.on_success(0.05, in_flight=64)
    assert limit.decreases == 1 and limit.best_latency == 0.05 and limit.current > 32
    limit.limit = 32.0
    epoch = limit.epoch
    assert limit.on_overload(epoch) and limit.current == 16
    assert not limit.on_overload(epoch)  # a 429 answering a request sent before the cut: already counted
    for _ in range(200):
        limit.on_success(0.01, in_flight=1)  # nearly idle: a low limit is not tested, so it does not grow
    assert limit.current == 16
    for _ in range(200):
        limit.on_success(0.01, in_flight=16)
    assert 16 < limit.current <= 64
