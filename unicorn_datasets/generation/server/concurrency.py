"""Adaptive concurrency for one endpoint: AIMD on overload signals and on latency, as TCP does for a link.

The limit starts at the caller's `max_in_flight` (the user's estimate of what the servers take; LLM
servers batch whatever they are sent, so starting low only wastes the first minutes). It is halved on an
overload signal (429, 503, timeout) or when the median latency per token of the last window rises above
`tolerance` x the best window seen. If the window after such a cut is no faster, the rise was not ours
(longer prompts, say) and that latency becomes the new baseline instead of cutting again. The limit grows
back by `step` per window of successes while it is used.
A burst of signals from requests sent before the last decrease counts once (the `epoch` check), so a
hundred 429s answering one overloaded moment halve the limit once, not a hundred times.

Medians over windows, not a gradient on an average: LLM latencies are heavy-tailed (a p99 ten times the
median is normal), and an EWMA of them would read every long answer as congestion.
"""

from __future__ import annotations

import statistics


class AdaptiveLimit:
    def __init__(self, max_limit: int, *, min_limit: int = 1, backoff: float = 0.5, tolerance: float = 3.0,
                 step: float | None = None, min_window: int = 32) -> None:
        self.max_limit = max(1, int(max_limit))
        self.min_limit = max(1, min(int(min_limit), self.max_limit))
        self.limit = float(self.max_limit)
        self.backoff, self.tolerance, self.min_window = float(backoff), float(tolerance), int(min_window)
        self.step = float(step) if step is not None else max(1.0, 0.1 * self.max_limit)  # per window
        self.epoch = 0  # bumped at each decrease; requests remember the epoch they were sent in
        self.decreases = 0
        self.best_latency: float | None = None  # best window median, seconds per token
        self._window: list[float] = []
        self._median_at_cut: float | None = None  # set by a latency cut until the next window tells if it helped

    @property
    def current(self) -> int:
        return max(self.min_limit, int(self.limit))

    def on_success(self, seconds_per_token: float, in_flight: int) -> None:
        """A request came back; `in_flight` is how many were out when it was sent (growth only if used)."""
        self._window.append(seconds_per_token)
        if len(self._window) >= max(self.min_window, self.current):
            median = statistics.median(self._window)
            self._window.clear()
            if self._median_at_cut is not None:
                if median > 0.8 * self._median_at_cut:  # halving did not help: not our load, a new normal
                    self.best_latency = median
                self._median_at_cut = None
            elif self.best_latency is None or median < self.best_latency:
                self.best_latency = median
            elif median > self.tolerance * self.best_latency:
                self._decrease()
                self._median_at_cut = median
                return
        if 2 * in_flight >= self.current:  # an idle limit says nothing about what the server takes
            self.limit = min(float(self.max_limit), self.limit + self.step / max(self.limit, 1.0))

    def on_overload(self, epoch: int) -> bool:
        """429 / 503 / timeout on a request sent in `epoch`. True if this halved the limit."""
        if epoch != self.epoch:
            return False
        self._decrease()
        return True

    def _decrease(self) -> None:
        self.limit = max(float(self.min_limit), self.limit * self.backoff)
        self.epoch += 1
        self.decreases += 1
        self._window.clear()
