"""Logging and progress that behave under accelerate: one bar on rank 0 counting all ranks' rows."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from tqdm.auto import tqdm

REFRESH_S = 0.5  # redraws (and re-reads of the landed parts) at most this often


class StageProgress:
    """Rank 0 shows the total across ranks (finished parts of every rank + its own current rows).

    `done_rows()` reads the landed parts from disk, so it runs at most every REFRESH_S: with small
    shards, re-reading on every landed shard would cost O(parts) per shard. Thread-safe: the engine
    lands parts from a worker thread while rows advance on its event loop."""

    def __init__(self, stage: str, total: int, *, enabled: bool, done_rows: Callable[[], int]) -> None:
        self.done_rows = done_rows if enabled else (lambda: 0)  # other ranks draw nothing: no disk reads
        self.own = 0  # this rank's rows decided but not yet in a landed part
        self.bar = tqdm(total=total, desc=stage, unit="row", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self.bar.n = self.done_rows()
        self.bar.refresh()
        self._last = 0.0
        self._lock = threading.Lock()
        self._postfix: Callable[[], str] | None = None

    def advance(self, rows: int, postfix: Callable[[], str] | None = None) -> None:
        """`postfix` is called only when the bar is redrawn (not per row)."""
        with self._lock:
            self.own += rows
            if postfix is not None:
                self._postfix = postfix
            self._refresh()

    def shard_finished(self, rows: int) -> None:
        """The shard's part file has landed: done_rows() counts its rows from now on, so we stop."""
        with self._lock:
            self.own = max(0, self.own - rows)
            self._refresh()

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < REFRESH_S:
            return
        self._last = now
        if self._postfix is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=False)
        self.bar.n = min(self.bar.total, self.done_rows() + self.own)
        self.bar.refresh()

    def close(self) -> None:
        with self._lock:
            self.own = 0
            self._refresh(force=True)
        self.bar.close()
