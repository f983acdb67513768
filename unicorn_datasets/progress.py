"""Logging and progress that behave under accelerate: one bar on rank 0 counting all ranks' rows."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm.auto import tqdm


class StageProgress:
    """Rank 0 shows the total across ranks (finished parts of every rank + its own current rows)."""

    def __init__(self, stage: str, total: int, *, enabled: bool, done_rows: Callable[[], int]) -> None:
        self.done_rows = done_rows
        self.own = 0
        self.bar = tqdm(total=total, desc=stage, unit="row", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self.bar.n = done_rows()
        self.bar.refresh()
        self._last = 0.0

    def advance(self, rows: int, postfix: str | None = None) -> None:
        self.own += rows
        now = time.monotonic()
        if now - self._last > 0.5:
            self._last = now
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self._refresh()

    def shard_finished(self, rows: int) -> None:
        """The shard's part file now counts in done_rows(): stop counting its rows as our own."""
        self.own = max(0, self.own - rows)
        self._refresh()

    def _refresh(self) -> None:
        self.bar.n = min(self.bar.total, self.done_rows() + self.own)
        self.bar.refresh()

    def close(self) -> None:
        self.own = 0
        self._refresh()
        self.bar.close()
