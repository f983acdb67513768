"""The shard runner: a stage's rows cut into fixed shards, this rank's unfinished ones run, one part per shard.

Shard i belongs to rank i % world_size, so any process count covers the same shards and a build
killed under one count resumes under another. A part lands atomically and its existence is the
only "done" signal. Two ways to run a shard's rows:
- `run_generation`: LLM stages; the generation engine streams every unfinished shard through one
  window of requests, and each shard's part lands as soon as its last row is decided;
- `run_map`: model-free or encoder stages; a batched `Dataset.map` per shard.
Shard statistics (rows, tokens, rejections) come from the engine's row outcomes, or a map's part size,
never from column names.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import datasets
import pyarrow as pa

from unicorn_datasets.dataset.layout import JOURNAL
from unicorn_datasets.generation.engine import Engine, RowOutcome, WorkUnit
from unicorn_datasets.generation.journal import Journal
from unicorn_datasets.pipeline.context import Context, log
from unicorn_datasets.pipeline.interrupts import on_interrupt
from unicorn_datasets.progress import StageProgress


@dataclass(frozen=True)
class Shards:
    """A dataset cut into consecutive fixed-size shards, numbered `first` .. `count - 1`.

    `first` > 0 continues the numbering of earlier rounds of the same stage (their parts stay theirs)."""

    rows: int
    count: int
    load: Callable[[int], datasets.Dataset]
    first: int = 0

    @classmethod
    def of(cls, ds: datasets.Dataset, size: int, *, start: int = 0) -> Shards:
        n = len(ds)

        def load(i: int) -> datasets.Dataset:
            k = i - start
            return ds.select(range(k * size, min((k + 1) * size, n)))

        return cls(n, start + (math.ceil(n / size) if n else 0), load, start)


class RowGenerator(Protocol):
    """What `run_generation` needs of an LLM stage (stages/base.py: `GenerationStage` implements it)."""

    name: str

    def work_unit(self, shard: int, rows: dict[str, list]) -> WorkUnit: ...

    def part_table(self, rows: dict[str, list], outcomes: list[RowOutcome]) -> pa.Table: ...


def _plan(ctx: Context, name: str, shards: Shards) -> tuple[list[int], dict[str, Any]]:
    """This rank's unfinished shards; half-written parts of a killed run are removed first (rank 0)."""
    repo = ctx.repo
    mine = [i for i in range(shards.first, shards.count) if i % ctx.world == ctx.rank]
    if ctx.is_main:
        stale = repo.remove_stale_tmp(name)
        if stale:
            log(f"{name}: removed {stale} half-written part(s) left by an interrupted run")
    ctx.barrier()
    done = repo.done_shards(name)
    todo = [i for i in mine if i not in done]
    stats = ctx.run_stats.setdefault(
        name,
        {"shards_total": shards.count, "shards_skipped": 0, "shards_run": 0, "rows_run": 0, "tokens_run": 0,
         "rejected_run": 0, "seconds": 0.0},
    )
    stats["shards_skipped"] += len(mine) - len(todo)
    stats["shards_total"] = max(stats["shards_total"], shards.count)
    skipped = len(mine) - len(todo)
    log(f"{name}: {shards.count - shards.first} shards in all; this rank has {len(mine)}: {skipped} finished "
        f"earlier (skipped), {len(todo)} to run", ctx.rank)
    return todo, stats


def _progress(ctx: Context, name: str, shards: Shards) -> StageProgress:
    repo = ctx.repo

    seen: dict[int, int] = {}  # shard -> rows, for the parts already read: each sidecar is read once

    def done_rows() -> int:  # rows of this call's shards that have landed (any rank)
        for i in repo.done_shards(name) - seen.keys():
            if i >= shards.first:
                seen[i] = repo.part_rows(name, i)
        return sum(seen.values())

    return StageProgress(name, shards.rows, enabled=ctx.is_main, done_rows=done_rows)


def _land(ctx: Context, name: str, shard: int, table: pa.Table, *, tokens: int, rejected: int, secs: float,
          stats: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    meta = {"rows": table.num_rows, "tokens": tokens, "rejected": rejected, "seconds": secs, "rank": ctx.rank,
            **(extra or {})}
    ctx.repo.write_part(name, shard, table, meta)
    stats["shards_run"] += 1
    stats["rows_run"] += table.num_rows
    stats["tokens_run"] += tokens
    stats["rejected_run"] += rejected
    log(f"{name}: shard {shard} done ({table.num_rows} rows, {rejected} rejected, {tokens} tokens, {secs:.1f}s)",
        ctx.rank)


def run_generation(ctx: Context, stage: RowGenerator, shards: Shards) -> None:
    """Every unfinished shard of this rank through one generation engine; parts land as shards complete."""
    name = stage.name
    todo, stats = _plan(ctx, name, shards)
    if todo:
        backend = ctx.backend()  # loaded only when this rank has shards left to run
        check = getattr(backend, "check_available", None)
        if check is not None and not ctx.servers_checked:
            check()  # a server that is down at start: one clear line before any work
        ctx.servers_checked = False  # the preflight's answer stands for this stage only
        progress = _progress(ctx, name, shards)
        journal = Journal(ctx.repo.work / JOURNAL / name)
        for shard in set(journal.pending_units()) - set(todo):
            if shard % ctx.world == ctx.rank:
                journal.discard(shard)  # its part landed just before a kill: the journal is spent
        llm = ctx.recipe.llm
        engine = Engine(backend, max_in_flight=llm.max_in_flight, journal=journal,
                        batches_per_call=llm.batches_per_call,
                        on_row=lambda s: progress.advance(1, lambda: engine_postfix(s)))
        rows_of: dict[int, dict[str, list]] = {}
        started: dict[int, float] = {}

        def units():  # lazily: one shard's rows in memory at a time, plus those in flight
            for i in todo:
                rows_of[i] = shards.load(i).to_dict()
                started[i] = time.monotonic()
                yield stage.work_unit(i, rows_of[i])

        def on_done(unit: WorkUnit, outcomes: list[RowOutcome]) -> None:
            rows = rows_of.pop(unit.key)
            table = stage.part_table(rows, outcomes)
            counts = {"requests": sum(o.requests for o in outcomes), "replayed": sum(o.replayed for o in outcomes)}
            _land(ctx, name, unit.key, table, tokens=sum(o.n_tokens for o in outcomes),
                  rejected=sum(o.value is None for o in outcomes), secs=time.monotonic() - started.pop(unit.key),
                  stats=stats, extra=counts)
            progress.shard_finished(len(outcomes))

        t0 = time.monotonic()
        try:
            with on_interrupt(engine.cancel):  # Ctrl-C stops the engine; the build then ends in Interrupted
                es = engine.run(units(), on_done)
        finally:
            stats["seconds"] += time.monotonic() - t0
            progress.close()
        for k in ("requests", "replayed", "retries", "server_errors"):
            stats[k] = stats.get(k, 0) + getattr(es, k)
        stats["max_in_flight_seen"] = max(stats.get("max_in_flight_seen", 0), es.max_in_flight_seen)
        if es.replayed:
            log(f"{name}: {es.replayed} generation(s) replayed from the journal of an interrupted run", ctx.rank)
    ctx.barrier()


def engine_postfix(s: Any) -> str:
    r = s.rates()
    return (f"in flight {s.in_flight}, {r['rows_per_s']:.1f} rows/s, {r['tokens_per_s']:.0f} tok/s, "
            f"retries {s.retries}, rejected {s.rejected}")


def run_map(
    ctx: Context,
    name: str,
    shards: Shards,
    make_fn: Callable[[], Callable[[dict[str, list]], dict[str, list]]],
    *,
    batch_size: int,
    on_part: Callable[[int, pa.Table], None] | None = None,
) -> None:
    """`make_fn()` as a batched map over this rank's unfinished shards; one part file per shard.

    `on_part(shard, table)` runs before the part lands (e.g. to save a partial sum), so a part's
    existence still means everything about that shard is on disk."""
    todo, stats = _plan(ctx, name, shards)
    progress = _progress(ctx, name, shards)
    fn = make_fn() if todo else None
    t_stage = time.monotonic()
    for i in todo:
        t0 = time.monotonic()
        shard = shards.load(i)

        def tracked(batch: dict[str, list], _fn: Callable = fn) -> dict[str, list]:  # type: ignore[assignment]
            out = _fn(batch)
            progress.advance(len(next(iter(batch.values()))))
            return out

        # new_fingerprint: the function holds a model; hashing it would pickle the weights.
        result = shard.map(tracked, batched=True, batch_size=batch_size, new_fingerprint=f"{name}-{i}-{os.getpid()}",
                           remove_columns=shard.column_names, load_from_cache_file=False, keep_in_memory=True)
        table = result.data.table.combine_chunks()
        if on_part is not None:
            on_part(i, table)
        _land(ctx, name, i, table, tokens=0, rejected=0, secs=time.monotonic() - t0, stats=stats)
        progress.shard_finished(table.num_rows)
    stats["seconds"] += time.monotonic() - t_stage
    ctx.barrier()
    progress.close()
