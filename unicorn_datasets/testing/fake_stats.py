"""The fake server's counters: requests received, served and failed, in flight over time, attempts per body."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any


class ServerStats:
    """What the server saw since its last reset (GET /stats); times are seconds since that reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0 = time.monotonic()
        self.received: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.invalid = 0
        self.cancelled = 0  # the client hung up before the answer
        self.duplicates = 0  # requests whose exact body had been received before
        self.completion_tokens = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_request: float | None = None
        # requests for one token (a client's health check) apart: a bench can time the work requests alone
        self.one_token = 0
        self.first_work_request: float | None = None
        self.last_response: float | None = None
        self.series: list[tuple[float, int, int]] = []  # (time, in flight, generation requests received so far)
        self.attempts: Counter[bytes] = Counter()  # body hash -> times received

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 4)

    def as_dict(self, with_series: bool) -> dict[str, Any]:
        out = {
            "received": dict(self.received), "served": dict(self.served), "failed": dict(self.failed),
            "invalid": self.invalid, "cancelled": self.cancelled, "duplicates": self.duplicates,
            "unique_requests": len(self.attempts), "completion_tokens": self.completion_tokens,
            "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
            "first_request": self.first_request, "last_response": self.last_response, "now": self.now(),
            "one_token": self.one_token, "first_work_request": self.first_work_request,
        }
        if with_series:
            out["series"] = self.series
        return out
