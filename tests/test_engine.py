"""The generation engine on its own: window, per-row retries, failures, journal replay, determinism."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from unicorn_datasets.generation.base import (
    BackendUnavailable,
    GenerationRequest,
    GenerationResult,
    RequestFailed,
    SamplingParams,
)
from unicorn_datasets.generation.engine import Engine, RowOutcome, WorkUnit
from unicorn_datasets.generation.journal import Journal
from unicorn_datasets.generation.slots import RequestSlots

PARAMS = SamplingParams(max_new_tokens=16)


class AsyncEcho:
    """A server-like backend: answers after a random delay; `fail` keys fail for good; counts what it was sent."""

    supports_chat = True

    def __init__(self, max_in_flight: int = 8, fail: set[str] = frozenset(), down: bool = False) -> None:
        self.max_in_flight = max_in_flight
        self.fail, self.down = fail, down
        self.in_flight = self.peak = 0
        self.sent: list[tuple[str, int]] = []

    async def agenerate_one(self, req: GenerationRequest, params: SamplingParams) -> GenerationResult:
        self.sent.append((req.key, req.seed))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(random.uniform(0.0, 0.01))
        finally:
            self.in_flight -= 1
        if self.down or req.key in self.fail:
            raise RequestFailed(f"HTTP 503 from fake for {req.key}")
        # the answer depends on the request only: "ok" on even seeds, "bad" on odd ones
        return GenerationResult(text=f"{req.key}:{'ok' if req.seed % 2 == 0 else 'bad'}", n_tokens=3)


class SyncEcho:
    """An in-process-like backend: whole batches, synchronously."""

    supports_chat = False
    batch_size = 4

    def __init__(self) -> None:
        self.batches: list[int] = []

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        self.batches.append(len(requests))
        return [GenerationResult(text=f"{r.key}:{'ok' if r.seed % 2 == 0 else 'bad'}", n_tokens=2) for r in requests]


def units(n_units: int, rows: int, max_attempts: int = 3) -> list[WorkUnit]:
    def make(u: int) -> WorkUnit:
        keys = [f"u{u}r{i}" for i in range(rows)]

        def request(i: int, attempt: int) -> GenerationRequest:
            # seed: deterministic per (row, attempt); attempt 0 of every third row is "odd" (fails validation)
            seed = 2 * (i + attempt) + (1 if attempt == 0 and i % 3 == 0 else 0)
            return GenerationRequest(key=keys[i], seed=seed, prompt=f"p{keys[i]}")

        def validate(i: int, res: GenerationResult) -> tuple[object, str | None, list[str]]:
            return (res.text, None, []) if res.text.endswith(":ok") else (None, "bad_output", [])

        return WorkUnit(u, keys, request, validate, PARAMS, max_attempts)

    return [make(u) for u in range(n_units)]


def run(engine: Engine, work: list[WorkUnit]) -> dict[int, list[RowOutcome]]:
    done: dict[int, list[RowOutcome]] = {}
    engine.run(work, lambda unit, outcomes: done.__setitem__(unit.key, outcomes))
    return done


def test_window_is_max_in_flight_across_units_and_every_row_gets_its_retry() -> None:
    backend = AsyncEcho(max_in_flight=16)
    done = run(Engine(backend), units(10, 5))
    assert sorted(done) == list(range(10))
    assert backend.peak == 16  # 50 rows, 5 per unit: the window spans units, never the unit size
    for outcomes in done.values():
        assert all(o.value is not None for o in outcomes)
        assert [o.attempts for o in outcomes] == [2, 1, 1, 2, 1]  # every third row needed its retry
        assert outcomes[0].attempt_reasons == ["bad_output"]


def test_rows_do_not_depend_on_the_window() -> None:
    def rows(engine: Engine) -> dict[int, list[tuple]]:
        return {k: [(o.value, o.reason, o.seed) for o in v] for k, v in run(engine, units(3, 7)).items()}

    a = rows(Engine(AsyncEcho(), max_in_flight=1))
    assert rows(Engine(AsyncEcho(), max_in_flight=64)) == a
    assert rows(Engine(AsyncEcho(), max_in_flight=4, retry_backlog=0)) == a  # retries at once, not deferred


def test_retries_wait_behind_new_rows_up_to_the_backlog() -> None:
    """A stage's end is filled with retries: while new rows remain (and fewer than the backlog wait), a
    rejected row's retry goes after them; with no backlog it goes at once, in its row's slot."""
    deferred = AsyncEcho(max_in_flight=4)
    done = run(Engine(deferred, retry_backlog=16), units(1, 30))
    firsts = [(key, seed) for key, seed in deferred.sent if seed % 2 == 1 or int(key[3:]) % 3]
    assert len(deferred.sent) == 40 and deferred.sent[:30] == firsts  # 30 first attempts, then 10 retries
    assert all(o.value is not None for o in done[0])
    at_once = AsyncEcho(max_in_flight=4)
    run(Engine(at_once, retry_backlog=0), units(1, 30))
    first_retry = next(n for n, (key, seed) in enumerate(at_once.sent) if int(key[3:]) % 3 == 0 and seed % 2 == 0)
    assert first_retry < 10  # row 0's retry, among the first rows


def test_failed_request_is_a_rejection_not_a_failed_build() -> None:
    backend = AsyncEcho(fail={"u0r1"})
    done = run(Engine(backend), units(2, 4))
    row = done[0][1]
    assert row.value is None and row.reason == "server_error" and "HTTP 503" in (row.error or "")
    assert sum(o.value is not None for outs in done.values() for o in outs) == 7


def test_backend_down_stops_with_one_clear_error() -> None:
    with pytest.raises(BackendUnavailable, match="in a row"):
        run(Engine(AsyncEcho(down=True), max_in_flight=4, fail_after=6), units(5, 5))


def test_in_process_backend_gets_batches() -> None:
    backend = SyncEcho()
    done = run(Engine(backend, batches_per_call=1), units(3, 6))
    assert max(backend.batches) == 4 and sum(o.value is not None for v in done.values() for o in v) == 18


def test_journal_replays_finished_generations(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    first = AsyncEcho()
    seen: list[int] = []

    def crash_after_first(unit: WorkUnit, outcomes: list[RowOutcome]) -> None:
        seen.append(unit.key)
        raise KeyboardInterrupt  # the process dies while landing the first part

    work = units(1, 6)
    with pytest.raises(KeyboardInterrupt):
        Engine(first, journal=journal).run(work, crash_after_first)
    sent_first = len(first.sent)
    assert journal.pending_units() == [0]

    again = AsyncEcho()
    engine = Engine(again, journal=journal)
    done = run(engine, units(1, 6))
    assert again.sent == [] and engine.stats.replayed == sent_first  # nothing generated twice
    assert all(o.value is not None for o in done[0]) and journal.pending_units() == []


def test_journal_ignores_a_torn_last_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    run(Engine(AsyncEcho(), journal=journal), [])
    with journal.open(0) as fh:
        fh.write('{"row": "u0r0", "attempt": 0, "dig')
    assert journal.load(0) == {}


def test_a_failed_part_write_stops_the_run_with_its_error() -> None:
    """Parts land on a worker thread: its error must still end the run (no hang, nothing landed after it)."""
    import threading

    landed: list[int] = []

    def disk_full_on_second(unit: WorkUnit, outcomes: list[RowOutcome]) -> None:
        if landed:
            raise OSError("No space left on device")
        landed.append(unit.key)

    errors: list[BaseException] = []

    def go() -> None:
        try:
            Engine(AsyncEcho(max_in_flight=3)).run(units(12, 2), disk_full_on_second)
        except BaseException as e:  # noqa: BLE001 - the test inspects whatever ends the run
            errors.append(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "the engine hung after a failed part write"
    assert len(errors) == 1 and isinstance(errors[0], OSError) and "No space" in str(errors[0])
    assert len(landed) == 1


def test_request_slots_serve_first_attempts_then_retries_and_an_overdue_retry_first() -> None:
    async def order(max_wait: float) -> list[str]:
        slots, served = RequestSlots(1, max_wait=max_wait), []
        await slots.acquire()

        async def wait(name: str, retry: bool) -> None:
            await slots.acquire(retry)
            served.append(name)
            slots.release()

        cancelled = asyncio.create_task(wait("first0", False))
        tasks = [asyncio.create_task(wait(n, n.startswith("retry"))) for n in ("retry1", "first1", "retry2", "first2")]
        await asyncio.sleep(0.01)  # every waiter queued; the first leaves before its turn, and takes no slot
        cancelled.cancel()
        slots.release()
        await asyncio.gather(*tasks)
        await asyncio.wait_for(slots.acquire(), 1)  # the one slot is free again
        return served

    assert asyncio.run(order(max_wait=10.0)) == ["first1", "first2", "retry1", "retry2"]
    assert asyncio.run(order(max_wait=0.0)) == ["retry1", "retry2", "first1", "first2"]  # waited too long: first
