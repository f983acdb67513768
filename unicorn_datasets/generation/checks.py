"""The check worker: model-based checks, batched across the engine's window, on a thread of their own.

A work unit's cheap checks run inline (`WorkUnit.validate`); a check that needs a model (an encoder
call) is a `BatchCheck`, a function over a list of candidates that the inline checks accepted. The
worker collects candidates from every row in flight into micro-batches (up to `max_batch`, waiting at
most `max_wait` seconds for more once the first arrives), runs each batch on its thread and hands the
verdicts back to the event loop, which never waits on a model. Candidates of one batch are grouped by
their check function (one per stage), in arrival order.

Rows must not depend on how candidates were batched: a check computes each candidate's verdict from
that candidate alone (encoders/stable.py gives embeddings that do not depend on the batch's mix).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchCheck", "Candidate", "CheckWorker", "Verdict"]


@dataclass
class Candidate:
    value: Any  # what the inline validate accepted (whatever the stage's check needs)
    notes: list[str] = field(default_factory=list)  # the inline validate's notes (repairs)


Verdict = tuple[Any, str | None, list[str]]  # (final value, rejection reason or None, notes)
# Per candidate, in order: a Verdict, or only a reason (None: accepted as the inline validate left it).
BatchCheck = Callable[[list[Candidate]], list[Verdict | str | None]]

_STOP = object()


def _verdict(cand: Candidate, out: Verdict | str | None) -> Verdict:
    if out is None or isinstance(out, str):
        return (cand.value, None, cand.notes) if out is None else (None, out, [])
    return out


class CheckWorker:
    """One thread that runs batched checks; `check(...)` is awaited on the engine's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_batch: int = 64, max_wait: float = 0.1) -> None:
        self.loop, self.max_batch, self.max_wait = loop, max(1, max_batch), max(0.0, max_wait)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="checks", daemon=True)
        self._thread.start()
        self.batches = 0  # micro-batches run (for the bench and tests)
        self.checked = 0  # candidates checked

    async def check(self, fn: BatchCheck, cand: Candidate) -> Verdict:
        fut: asyncio.Future[Verdict] = self.loop.create_future()
        self._queue.put((fn, cand, fut))
        return await fut  # a cancelled row cancels its future; the worker skips done futures

    def close(self) -> None:
        """Stop the thread after the batch it is running (the caller's loop keeps no pending verdict)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    # ---- the thread ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = [item], False
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple[BatchCheck, Candidate, asyncio.Future[Verdict]]]) -> None:
        groups: dict[int, list[tuple[BatchCheck, Candidate, asyncio.Future[Verdict]]]] = {}
        for entry in batch:
            groups.setdefault(id(entry[0]), []).append(entry)
        settled: list[tuple[asyncio.Future[Verdict], Verdict | None, BaseException | None]] = []
        for group in groups.values():
            live = [e for e in group if not e[2].done()]  # rows cancelled meanwhile are not checked
            if not live:
                continue
            try:
                outs = live[0][0]([c for _, c, _ in live])
                if len(outs) != len(live):
                    raise RuntimeError(f"a batched check returned {len(outs)} verdicts for {len(live)} candidates")
                settled += [(f, _verdict(c, o), None) for (_, c, f), o in zip(live, outs, strict=True)]
            except BaseException as e:  # handed to each row, which stops the build (never swallowed here)
                settled += [(f, None, e) for _, _, f in live]
            self.checked += len(live)
        self.batches += 1
        if settled:
            try:
                self.loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # the loop is closed: the engine has stopped, nobody waits for these
                pass


def _settle(settled: list[tuple[asyncio.Future[Verdict], Verdict | None, BaseException | None]]) -> None:
    for fut, verdict, err in settled:
        if fut.done():
            continue
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(verdict)
