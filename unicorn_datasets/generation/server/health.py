"""Is an endpoint up? The one-token health probe, the decision after a cool-down, and the "down" line.

An endpoint that fails `fail_threshold` attempts in a row rests for a cool-down (`Endpoint.rest`). Then one
probe (per endpoint, not per row: rows wait for it) decides: it answers, and rows go to it again; it fails,
and it is down and rests again. When every endpoint is down, so is the backend: "down" is decided one
cool-down and one probe after the failures began, with one line naming each endpoint once.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from unicorn_datasets.generation.base import BackendUnavailable, GenerationRequest, SamplingParams
from unicorn_datasets.generation.server.dialects import Fatal, Retryable, classified, probe, send
from unicorn_datasets.generation.server.endpoints import Endpoint

RESUME = "start or fix the server(s), then rerun the same command to resume"


PING_TRIES = 3  # a server failing 1 request in 7 failed a two-try check 2 % of the time: a build stopped for a blip


async def ping(backend: Any, ep: Endpoint, http: Any) -> str | None:
    """Ask `ep` (a `client.ServerBackend`'s endpoint) for one token, up to PING_TRIES times; None when it answered."""
    seed = random.getrandbits(31)  # never a resend of an earlier run's ping (servers count those)
    if backend.supports_chat:
        req = GenerationRequest(key="health-check", seed=seed, messages=[{"role": "user", "content": "Hi"}])
    else:
        req = GenerationRequest(key="health-check", seed=seed, prompt="Hi")
    params = SamplingParams(max_new_tokens=1, temperature=0.0)
    error = None
    for attempt in range(PING_TRIES):
        try:
            if ep.kind is None:
                await classified(probe(ep, http, timeout=min(backend.timeout, 10.0), server_kind=backend.server_kind))
            await send(ep, req, params, model=backend.model, http=http)
        except Fatal:  # up, and it read the request: what it refuses shows on the rows
            return None
        except Retryable as e:
            if e.status == "HTTP 429":  # rate-limited is up
                return None
            error = e.status
            if attempt < PING_TRIES - 1:
                await asyncio.sleep(min(backend.backoff, 1.0))
            continue
        return None
    return error


async def ensure_recovered(backend: Any, ep: Endpoint, http: Any, lock: asyncio.Lock) -> bool:
    """True when rows may go to `ep`: it needs no probe, or its probe after the cool-down answered. Raises
    the backend's BackendUnavailable once every endpoint's probe has failed."""
    if not ep.needs_probe:
        return True
    seen = ep.probes
    async with lock:
        if ep.probes != seen or not ep.needs_probe:  # another row probed it while we waited
            return not ep.needs_probe
        error = await ping(backend, ep, http)
        with backend.scheduler.lock:
            ep.probes += 1
            if error is None:
                ep.recovered()
                return True
            ep.last_error, ep.down = error, True
            ep.rest(backend.cooldown, f"still fails after its cool-down ({error})")
            if all(x.down for x in backend.endpoints) and backend._unavailable is None:
                backend._unavailable = BackendUnavailable(down_message(backend.endpoints, backend.cooldown))
    if backend._unavailable is not None:
        raise backend._unavailable
    return False


def unavailable_message(endpoints: list[Endpoint], errors: dict[str, str]) -> str:
    parts = "; ".join(f"{ep.url} -> {errors.get(ep.url) or ep.last_error or 'no answer'}" for ep in endpoints)
    return f"all {len(endpoints)} endpoint(s) failing: {parts}"


def down_message(endpoints: list[Endpoint], cooldown: float) -> str:
    return f"{unavailable_message(endpoints, {})} (each failed again after a {cooldown:g} s cool-down); {RESUME}"
