"""Generate-validate-retry for a batch of rows, shared by every LLM stage.

All pending rows of a round go to the backend in one call (so it can batch them); rows whose
output fails validation are retried with a new per-attempt seed, up to `max_attempts`, and then
recorded as rejected with the last reason. The reason of every failed attempt is kept in
`RowOutcome.reasons`, so an accepted row shows why it needed retries. Nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..generation.base import Backend, GenerationRequest, GenerationResult, SamplingParams


@dataclass
class RowOutcome:
    value: Any = None  # the validated output, None when rejected
    reason: str | None = None  # rejection reason of the last attempt
    reasons: list[str] = field(default_factory=list)  # the reason of every failed attempt, in order
    raw: str = ""  # last raw model text, kept so validation can be re-run without regenerating
    attempts: int = 0
    n_tokens: int = 0
    seed: int = 0  # the sampling seed of the last attempt
    notes: list[str] = field(default_factory=list)  # e.g. repairs made on the accepted output


def generate_with_retries(
    n_rows: int,
    make_request: Callable[[int, int], GenerationRequest],
    validate: Callable[[int, GenerationResult], tuple[Any, str | None, list[str]]],
    backend: Backend,
    params: SamplingParams,
    max_attempts: int,
) -> list[RowOutcome]:
    """make_request(row, attempt) builds a request; validate(row, result) -> (value, reason, notes)."""
    outcomes = [RowOutcome() for _ in range(n_rows)]
    pending = list(range(n_rows))
    for attempt in range(max(1, max_attempts)):
        if not pending:
            break
        requests = [make_request(i, attempt) for i in pending]
        results = backend.generate(requests, params)
        still: list[int] = []
        for i, req, res in zip(pending, requests, results):
            o = outcomes[i]
            o.attempts, o.raw, o.seed = attempt + 1, res.text, req.seed
            o.n_tokens += res.n_tokens
            value, reason, notes = validate(i, res)
            if reason is None:
                o.value, o.reason, o.notes = value, None, notes
            else:
                o.reason = reason
                o.reasons.append(reason)
                still.append(i)
        pending = still
    return outcomes
