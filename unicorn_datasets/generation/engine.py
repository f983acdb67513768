"""The generation engine: the window of rows in flight, per-row retries (a new seed per attempt), journaling and
accounting. Below it, a server backend has its own layer: per-request transport retries with backoff, an
adaptive concurrency limit per endpoint and its own event-loop thread (generation/server/client.py).

A stage hands it work units (one per shard), each with two functions: build the request for
(row, attempt), and validate a result into a value or a rejection reason. The engine never sees a
stage; a stage never sees a batch, an event loop or an endpoint.

Continuous, not batch-synchronous: a window of `max_in_flight` requests is kept full across all
units, in order. A request's slot goes to the next one the moment it completes; its row's validation
happens at once, and a rejected row retries (with the next attempt's seed) behind the new rows: up to
`retry_backlog` rows wait to retry, each for at most 10 s (generation/slots.py), so a stage's end is
filled with retries instead of a tail of late rows' second round trips. When the last row of a unit is
decided, `on_unit_done` lands its part, so parts land in order of completion. What a row contains
depends only on its requests (build seed, row, attempt), never on the window or process count.

Backends with `agenerate_one` (servers) get one coroutine per request; in-process backends get
the pending requests in batches of their `batch_size`, run on a worker thread.

A unit may add a model-based check (`WorkUnit.check`, a function over a batch of candidates): the
rows the inline `validate` accepts go to the check worker (generation/checks.py), which batches them
across the window on its own thread; a candidate the check rejects is retried like any rejection.
While rows wait for it, up to `check_backlog` more rows are opened, so the requests in flight stay at
`max_in_flight`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from unicorn_datasets.generation.base import (
    Backend,
    BackendUnavailable,
    FailureRun,
    GenerationRequest,
    GenerationResult,
    RequestFailed,
    SamplingParams,
    stop_event,
)
from unicorn_datasets.generation.checks import BatchCheck, Candidate, CheckWorker
from unicorn_datasets.generation.journal import Journal, Key, request_digest
from unicorn_datasets.generation.slots import RequestSlots

Validate = Callable[[int, GenerationResult], tuple[Any, str | None, list[str]]]


@dataclass
class RowOutcome:
    value: Any = None  # the validated output, None when rejected
    reason: str | None = None  # rejection reason (of the last attempt)
    raw: str = ""  # last raw model text, kept so validation can be re-run without regenerating
    attempts: int = 0  # generations validated for this row
    n_tokens: int = 0
    seed: int = 0  # the sampling seed of the last attempt
    notes: list[str] = field(default_factory=list)  # repairs made on the accepted output
    attempt_reasons: list[str] = field(default_factory=list)  # why each failed attempt failed, in order
    error: str | None = None  # the server's last error when the request failed for good
    replayed: int = 0  # generations taken from the journal instead of the backend
    requests: int = 0  # generations asked of the backend (failed ones included)


@dataclass
class WorkUnit:
    key: int  # the shard index; names its journal file
    row_keys: list[str]  # stable row ids
    make_request: Callable[[int, int], GenerationRequest]  # (row, attempt) -> request
    validate: Validate  # (row, result) -> (value, reason, notes)
    params: SamplingParams
    max_attempts: int
    decided: dict[int, RowOutcome] = field(default_factory=dict)  # rows settled without generation
    # model-based check over the candidates `validate` accepted (their values and notes), batched off the loop
    check: BatchCheck | None = None


OnUnitDone = Callable[[WorkUnit, list[RowOutcome]], None]


@dataclass
class EngineStats:
    rows: int = 0
    rejected: int = 0
    requests: int = 0  # sent to the backend
    replayed: int = 0  # taken from the journal
    retries: int = 0  # attempts after a row's first
    server_errors: int = 0
    tokens: int = 0
    in_flight: int = 0
    max_in_flight_seen: int = 0
    started: float = field(default_factory=time.monotonic)

    def rates(self) -> dict[str, float]:
        secs = max(1e-9, time.monotonic() - self.started)
        return {"rows_per_s": self.rows / secs, "tokens_per_s": self.tokens / secs}


@dataclass
class _Unit:
    unit: WorkUnit
    outcomes: list[RowOutcome | None]
    remaining: int
    replay: dict[Key, GenerationResult]
    journal_fh: IO[str] | None


class Engine:
    """Runs work units against one backend; `run` blocks until every unit is done (or the backend is down)."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_in_flight: int | None = None,
        journal: Journal | None = None,
        on_row: Callable[[EngineStats], None] | None = None,
        fail_after: int | None = None,
        batches_per_call: int = 4,
        check_batch: int = 64,
        check_wait: float = 0.1,
        check_backlog: int | None = None,
        retry_backlog: int | None = None,
    ) -> None:
        self.backend = backend
        self.batched = not hasattr(backend, "agenerate_one")
        # In-process: one call gets several batches (the backend sorts them by length, so they pad little),
        # and a second call's worth stays pending so the model never waits for validation.
        self.call_size = max(1, int(getattr(backend, "batch_size", 8)) * max(1, batches_per_call))
        default = 2 * self.call_size if self.batched else int(getattr(backend, "max_in_flight", 64))
        self.max_in_flight = max(1, int(max_in_flight or default))
        self.journal = journal
        self.on_row = on_row
        # Every row of a whole window failing for good, with no success between: the backend is down.
        self.failures = FailureRun(self.max_in_flight, fail_after)
        self.stats = EngineStats()
        self._stop = threading.Event()  # set: a model call running on a worker thread returns soon
        self._task: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None
        # a batch waits up to 0.1 s for more rows: an encoder call costs a fixed ~30 ms on CPU whatever its size, and
        # rows waiting for a check do not hold request slots (check_backlog), so fewer, larger calls cost nothing
        self.check_batch, self.check_wait = check_batch, check_wait
        # rows waiting for a batched check, beyond the window of requests (their slots go to new requests)
        self.check_backlog = self.max_in_flight if check_backlog is None else max(0, check_backlog)
        self.checker: CheckWorker | None = None
        # rows waiting to retry behind new rows (generation/slots.py): a stage's tail is filled with retries
        self.retry_backlog = self.max_in_flight if retry_backlog is None else max(0, retry_backlog)

    # ---- public -------------------------------------------------------------------------------
    def run(self, units: Iterable[WorkUnit], on_unit_done: OnUnitDone) -> EngineStats:
        """Raises asyncio.CancelledError when `cancel` stopped it."""
        coro = self._run(units, on_unit_done)
        # The heap a build has made by now (models, datasets, modules: ~10^5-10^6 objects) lives on: out of the
        # collector's way for the run, a full collection costs the new objects only, not ~0.5 s of stalled loop.
        gc.freeze()
        try:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(coro)
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:  # called from a running loop
                return pool.submit(asyncio.run, coro).result()
        finally:
            gc.unfreeze()

    def cancel(self) -> None:
        """Stop the running `run` soon: safe from any thread and from a signal handler. Rows in flight are
        abandoned (their finished generations are in the journal), parts being written still land."""
        self._stop.set()
        if self._task is not None:
            loop, task = self._task
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing left to stop
                loop.call_soon_threadsafe(task.cancel)

    # ---- scheduling ---------------------------------------------------------------------------
    async def _run(self, units: Iterable[WorkUnit], on_done: OnUnitDone) -> EngineStats:
        self.stats = EngineStats()
        stop = self._stop
        if stop.is_set():  # cancelled before the loop started
            self._stop = threading.Event()
            raise asyncio.CancelledError
        self._task = (asyncio.get_running_loop(), asyncio.current_task())  # type: ignore[assignment]
        # rows open: the window, rows waiting to retry, and (with a check) rows waiting for it
        window = asyncio.Semaphore(self.max_in_flight + self.retry_backlog)
        self._requests = RequestSlots(self.max_in_flight)  # requests at the backend, new rows first
        self.checker = None
        tasks: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []
        self._queue: asyncio.Queue[tuple[GenerationRequest, SamplingParams, asyncio.Future[Any]]] = asyncio.Queue()
        batcher = asyncio.create_task(self._batcher()) if self.batched else None

        def finish(state: _Unit) -> None:
            if state.journal_fh is not None:
                state.journal_fh.close()
            on_done(state.unit, [o for o in state.outcomes if o is not None])
            if self.journal is not None:
                self.journal.discard(state.unit.key)

        # Parts land on one worker thread, in turn: writing Parquet on the loop would stall every response.
        landing = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="land")
        loop = asyncio.get_running_loop()

        async def row(state: _Unit, i: int) -> None:
            try:
                try:
                    state.outcomes[i] = await self._row(state, i)
                finally:
                    window.release()  # the row is decided: its slot goes to the next request at once
                state.remaining -= 1
                if state.remaining == 0:
                    await loop.run_in_executor(landing, finish, state)
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # the backend is down, a validator or a part write failed: stop all
                if not failure:
                    failure.append(e)
                for t in tasks:
                    t.cancel()
                window.release()  # wake the feeder if it waits for a slot: tasks cancelled unstarted free none

        try:
            for unit in units:
                if unit.check is not None and self.checker is None:
                    self.checker = CheckWorker(loop, max_batch=self.check_batch, max_wait=self.check_wait)
                    for _ in range(self.check_backlog):
                        window.release()
                state = self._open(unit)
                if state.remaining == 0:
                    await loop.run_in_executor(landing, finish, state)
                    continue
                for i in range(len(unit.row_keys)):
                    if i in unit.decided:
                        continue
                    await window.acquire()
                    if failure:
                        break
                    t = asyncio.create_task(row(state, i))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                if failure:
                    break
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
        finally:
            stop.set()  # a model call still running stops at its next token: its rows are abandoned
            self._task, self._stop = None, threading.Event()  # a later run starts afresh
            for t in tasks:
                t.cancel()
            if batcher is not None:
                batcher.cancel()
            await asyncio.gather(*list(tasks), *([batcher] if batcher else []), return_exceptions=True)
            landing.shutdown(wait=True)  # a part being written finishes (atomically) before we return
            if self.checker is not None:  # its thread ends after the batch it runs; no verdict is awaited now
                await asyncio.to_thread(self.checker.close)
            aclose = getattr(self.backend, "aclose", None)
            if aclose is not None:  # the HTTP clients bound to this loop close with it, cleanly
                await aclose()
        if failure:
            raise failure[0]
        return self.stats

    def _open(self, unit: WorkUnit) -> _Unit:
        outcomes: list[RowOutcome | None] = [None] * len(unit.row_keys)
        for i, o in unit.decided.items():
            outcomes[i] = o
        replay = self.journal.load(unit.key) if self.journal is not None else {}
        remaining = len(unit.row_keys) - len(unit.decided)
        fh = self.journal.open(unit.key) if self.journal is not None and remaining else None
        return _Unit(unit, outcomes, remaining, replay, fh)

    async def _row(self, state: _Unit, i: int) -> RowOutcome:
        unit, o = state.unit, RowOutcome()
        for attempt in range(max(1, unit.max_attempts)):
            req = unit.make_request(i, attempt)
            key: Key = (unit.row_keys[i], attempt, request_digest(req, unit.params))
            res = state.replay.get(key)
            if res is not None:
                o.replayed += 1
                self.stats.replayed += 1
            else:
                o.requests += 1
                try:
                    res = await self._generate(req, unit.params, retry=attempt > 0)
                except RequestFailed as e:
                    o.reason, o.error = e.reason, e.error
                    o.attempt_reasons.append(e.reason)
                    o.seed = req.seed
                    self.stats.server_errors += 1
                    self._failed(e.error)
                    break
                self.failures.success()
                if state.journal_fh is not None:
                    Journal.append(state.journal_fh, key, res)
            if attempt:
                self.stats.retries += 1
            o.attempts, o.raw, o.seed = attempt + 1, res.text, req.seed
            o.n_tokens += res.n_tokens
            self.stats.tokens += res.n_tokens
            value, reason, notes = unit.validate(i, res)
            if reason is None and unit.check is not None and self.checker is not None:
                value, reason, notes = await self.checker.check(unit.check, Candidate(value, notes))
            if reason is None:
                o.value, o.reason, o.notes = value, None, notes
                break
            o.reason = reason
            o.attempt_reasons.append(reason)
        self.stats.rows += 1
        self.stats.rejected += o.value is None
        if self.on_row is not None:
            self.on_row(self.stats)
        return o

    def _failed(self, error: str) -> None:
        if self.failures.failure():
            raise BackendUnavailable(
                f"the LLM backend failed {self.failures.count} requests in a row with no success "
                f"(last error: {error}); fix the server and rerun the same command to resume"
            )

    # ---- talking to the backend ---------------------------------------------------------------
    async def _generate(self, req: GenerationRequest, params: SamplingParams, retry: bool = False) -> GenerationResult:
        await self._requests.acquire(retry)
        self.stats.requests += 1
        self.stats.in_flight += 1
        self.stats.max_in_flight_seen = max(self.stats.max_in_flight_seen, self.stats.in_flight)
        try:
            if not self.batched:
                return await self.backend.agenerate_one(req, params)  # type: ignore[attr-defined]
            fut: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
            await self._queue.put((req, params, fut))
            return await fut
        finally:
            self.stats.in_flight -= 1
            self._requests.release()

    async def _batcher(self) -> None:
        """In-process backends: hand the pending requests to the model a batch at a time, off the loop."""
        while True:
            item = await self._queue.get()
            group = [item]
            while len(group) < self.call_size and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt[1] != item[1]:  # one sampling setting per call
                    await self._queue.put(nxt)
                    break
                group.append(nxt)
            try:
                results = await asyncio.to_thread(self._call_model, [g[0] for g in group], item[1], self._stop)
            except asyncio.CancelledError:  # the engine is stopping: never swallowed, or `_run` waits forever
                for _, _, fut in group:
                    fut.cancel()
                raise
            except Exception as e:
                for _, _, fut in group:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, _, fut), res in zip(group, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    def _call_model(self, requests: list[GenerationRequest], params: SamplingParams,
                    stop: threading.Event) -> list[GenerationResult]:
        """On the worker thread: the backend sees this run's stop flag (`base.stop_event`) and returns early."""
        with stop_event(stop):
            return self.backend.generate(requests, params)
