"""The probe behind `unicorn plan`: a small sample of a build's real requests, sent and measured.

Rows are sampled from the real seed plan; the build's shard runner (`run_generation`) sends them
through the generation engine, each LLM stage's own `work_unit` building and validating them and
its `part_table` landing them, exactly as in a build (no dataset is written: the work area is a
temporary folder; per-shard costs such as part writes count as they will in the build). Stage 2
gets the probe's own Stage-1 captions as input. What is measured per stage: rows accepted,
requests (attempts) per row, prompt and completion tokens per request, request latency, and how
long each row held its window slot (all its attempts) at each window size. Servers: the window is
ramped (a quarter, a half, then all of `max_in_flight`), so a server whose latency grows with load
shows it. In-process models: one pass at the build's window; rows/s and tokens/s are this machine's.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import datasets

from unicorn_datasets.generation.base import GenerationResult
from unicorn_datasets.generation.engine import RowOutcome, WorkUnit
from unicorn_datasets.pipeline.shards import Shards, run_generation

if TYPE_CHECKING:
    from unicorn_datasets.pipeline.context import Context

BUSY = 0.8  # share of the steady span the client's loop thread wanted a core: above it, the client sets the pace


@dataclass
class Phase:
    """One window size of the probe."""

    window: int
    rows: int
    seconds: float
    row_seconds: list[float]  # per row: first request sent -> last answer validated
    cpu_seconds: float = 0.0  # this process's CPU time over the phase (the client's own cost)
    steady_rows_per_s: float | None = None  # rows decided per second while the window was full (see `steady_rate`)

    def summary(self) -> dict[str, Any]:
        rs = self.row_seconds
        return {"window": self.window, "rows": self.rows, "seconds": round(self.seconds, 3),
                "rows_per_s": round(self.rows / self.seconds, 3) if self.seconds else None,
                "cpu_s_per_row": round(self.cpu_seconds / self.rows, 5) if self.rows else None,
                "steady_rows_per_s": None if self.steady_rows_per_s is None else round(self.steady_rows_per_s, 2),
                "row_seconds_median": round(statistics.median(rs), 4) if rs else None}


@dataclass
class StageProbe:
    """What a stage's probe rows cost; `accepted` holds the accepted outputs by row id (captions for Stage 2)."""

    name: str
    server: bool  # requests go to servers (True) or to a model in this process
    window: int  # the build's max_in_flight
    rows: int = 0
    accepted: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    server_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)  # per request, seconds
    phases: list[Phase] = field(default_factory=list)

    @property
    def accept_share(self) -> float:
        return len(self.accepted) / self.rows if self.rows else 0.0

    @property
    def requests_per_row(self) -> float:
        return self.requests / self.rows if self.rows else 0.0

    def per_request(self, tokens: int) -> float:
        return tokens / self.requests if self.requests else 0.0

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    @property
    def steady_rate(self) -> float | None:
        return self.phases[-1].steady_rows_per_s if self.phases else None

    def row_times(self) -> list[float]:
        """Row slot times at the build's window: every phase's, scaled so their median is the top phase's
        (the ramp's smaller windows add samples for the tail; the top window sets the level)."""
        top = self.phases[-1].row_seconds if self.phases else []
        every = [t for p in self.phases for t in p.row_seconds]
        if not top or not every:
            return every
        scale = statistics.median(top) / max(statistics.median(every), 1e-9)
        return [t * scale for t in every]

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def q(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 4) if lat else None

        secs = self.seconds
        return {"rows": self.rows, "accepted": len(self.accepted), "accept_share": round(self.accept_share, 4),
                "requests": self.requests, "requests_per_row": round(self.requests_per_row, 4),
                "server_errors": self.server_errors,
                "prompt_tokens_per_request": round(self.per_request(self.prompt_tokens), 1),
                "completion_tokens_per_request": round(self.per_request(self.completion_tokens), 1),
                "latency_s": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99)},
                "seconds": round(secs, 3), "tokens_per_s": round(self.completion_tokens / secs, 1) if secs else None,
                "window": self.window, "ramp": [p.summary() for p in self.phases]}


class _Recorder:
    """Wraps a stage's work units to time each request and each row and count prompt tokens, and its parts
    to keep the accepted outputs; the shard runner sees the stage itself otherwise."""

    def __init__(self, stage: Any, probe: StageProbe) -> None:
        self.stage, self.probe, self.name = stage, probe, stage.name
        self.first: dict[tuple[int, int], float] = {}
        self.sent: dict[tuple[int, int], float] = {}
        self.done: dict[tuple[int, int], float] = {}
        # at the first decided row and at each row sent: (process CPU seconds, loop thread's wanted CPU seconds)
        self.cpu_at: dict[float, tuple[float, float | None]] = {}

    def work_unit(self, shard: int, rows: dict[str, list]) -> WorkUnit:
        unit = self.stage.work_unit(shard, rows)

        def make_request(i: int, attempt: int) -> Any:
            req = unit.make_request(i, attempt)
            now = time.monotonic()
            if (shard, i) not in self.first:
                self.cpu_at[now] = (time.process_time(), _wanted_cpu())
            self.first.setdefault((shard, i), now)
            self.sent[shard, i] = now
            return req

        def validate(i: int, res: GenerationResult) -> tuple[Any, str | None, list[str]]:
            now = time.monotonic()
            self.probe.latencies.append(now - self.sent[shard, i])
            self.probe.prompt_tokens += int(res.extra.get("prompt_tokens", 0))
            if not self.done:
                self.cpu_at[now] = (time.process_time(), _wanted_cpu())
            self.done[shard, i] = now
            return unit.validate(i, res)

        return dataclasses.replace(unit, make_request=make_request, validate=validate)

    def part_table(self, rows: dict[str, list], outcomes: list[RowOutcome]) -> Any:
        self.probe.accepted.update({rid: o.value for rid, o in zip(rows["id"], outcomes, strict=True)
                                    if o.value is not None})
        return self.stage.part_table(rows, outcomes)

    def row_seconds(self) -> list[float]:
        return [self.done[k] - self.first[k] for k in self.done]

    def steady_rate(self) -> float | None:
        """Rows per second while the window was full: between the first row decided and the last row sent,
        each decided row let the next one in, so rows sent in that span / its length is the rate the client
        and servers sustain together (a busy client shows here, not in the rows' latencies). None when every
        row fit in the first window."""
        if not self.done:
            return None
        opened = min(self.done.values())
        later = sorted(t for t in self.first.values() if t > opened)
        if len(later) < 8 or later[-1] <= opened:
            return None
        return len(later) / (later[-1] - opened)

    def span_cpu(self) -> tuple[float, float] | None:
        """Over the span `steady_rate` measures: CPU seconds per row (work deferred past it, such as parts
        landing on their thread, is not in it), and the share of the span the event-loop thread wanted a
        core (running or waiting for one: near 1 when the client, not the server, sets the pace)."""
        if not self.done:
            return None
        opened = min(self.done.values())
        later = sorted(t for t in self.first.values() if t > opened)
        if len(later) < 8 or opened not in self.cpu_at or later[-1] not in self.cpu_at:
            return None
        (cpu0, want0), (cpu1, want1) = self.cpu_at[opened], self.cpu_at[later[-1]]
        busy = (want1 - want0) / (later[-1] - opened) if want0 is not None and want1 is not None else 0.0
        return (cpu1 - cpu0) / len(later), busy


def _wanted_cpu() -> float | None:
    """Seconds this thread has run or waited for a core (Linux schedstat); None elsewhere."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
            ran, waited = f.read().split()[:2]
        return (int(ran) + int(waited)) / 1e9
    except (OSError, ValueError):
        return None


def windows(server: bool, window: int) -> list[int]:
    """The ramp: servers a quarter, a half and all of the window; in-process the window alone."""
    if not server:
        return [window]
    return sorted({max(1, window // 4), max(1, window // 2), window})


def split_rows(n: int, ramp: list[int]) -> list[int]:
    """Rows per phase: each smaller window an eighth, the top window the rest (its steady rate needs rows
    beyond its first window)."""
    if len(ramp) == 1:
        return [n]
    low = n // 8
    return [low] * (len(ramp) - 1) + [n - low * (len(ramp) - 1)]


def run_stage_probe(ctx: Context, stage: Any, rows: datasets.Dataset, *, window: int) -> StageProbe:
    """`rows` (the stage's input columns) through the build's own shard runner, engine and work units, into
    the context's (temporary) work area: phase by phase, each at its window, shards numbered on."""
    server = hasattr(ctx.backend(), "agenerate_one")
    probe = StageProbe(stage.name, server, window)
    ramp = windows(server, window)
    start, first = 0, 0
    for w, n in zip(ramp, split_rows(len(rows), ramp), strict=True):
        if n == 0:
            continue
        recipe = dataclasses.replace(ctx.recipe, llm=dataclasses.replace(ctx.recipe.llm, max_in_flight=w))
        phase_ctx = dataclasses.replace(ctx, recipe=recipe, run_stats={})
        shards = Shards.of(rows.select(range(start, start + n)), ctx.shard_size, start=first)
        rec = _Recorder(stage, probe)
        t0, cpu0 = time.monotonic(), time.process_time()
        run_generation(phase_ctx, rec, shards)
        cpu = time.process_time() - cpu0
        rate, span = rec.steady_rate(), rec.span_cpu()
        if rate and span and span[1] >= BUSY and cpu / n > span[0]:
            # the client set the pace over the span, and each row cost more CPU in all than within it: over a
            # build's length that deferred work is paid for as it goes, at the same pace
            rate *= span[0] / (cpu / n)
        probe.phases.append(Phase(w, n, time.monotonic() - t0, rec.row_seconds(), cpu, rate))
        stats = phase_ctx.run_stats[stage.name]
        probe.rows += n
        probe.requests += stats.get("requests", 0)
        probe.server_errors += stats.get("server_errors", 0)
        probe.completion_tokens += stats.get("tokens_run", 0)
        start, first = start + n, shards.count
    return probe


def sample_rows(n_rows: int, n: int, seed: int) -> list[int]:
    """`n` row positions out of `n_rows`, drawn without replacement for `seed`, in row order."""
    return sorted(random.Random(seed).sample(range(n_rows), min(n, n_rows)))
