"""`unicorn plan`: what a build will cost (requests, tokens, seconds, dollars), predicted from a probe.

Rows per stage come from the build's own code: `collect_seeds` (Stage 1's rows), the probe's
acceptance share (Stage 1's captions, hence Stages 2 and 3's inputs) and `select_tasks` (Stage 2's
task mix). The probe (probe.py) sends a sample of each LLM stage's real requests; from it:

- requests = rows x requests per row; tokens = requests x tokens per request (prompt, completion);
- seconds, servers: the engine keeps `max_in_flight` requests in flight, so the build's window is
  simulated with row times (all of a row's attempts) drawn from the probe's, the tail of the last rows
  included; the engine sends retries behind new rows (generation/slots.py), which shortens that tail, so
  the simulation errs long by at most a latency or so per stage; in-process: rows x the probe's seconds
  per row on this machine;
- Stage 3: a timed batch of the encoder on the probe's captions.

Nothing is written but `--save FILE`; `unicorn build --plan FILE` records the plan beside what happened.
"""

from __future__ import annotations

import heapq
import random
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import datasets

from unicorn_datasets.generation.engine import Engine
from unicorn_datasets.pipeline.context import Context, log, make_state
from unicorn_datasets.pipeline.loop import collect_seeds, plan_stages
from unicorn_datasets.pipeline.probe import StageProbe, run_stage_probe, sample_rows
from unicorn_datasets.recipe import Recipe
from unicorn_datasets.stages.captions import CaptionStage
from unicorn_datasets.stages.instruct import InstructStage
from unicorn_datasets.stages.instruct.selection import select_tasks
from unicorn_datasets.stages.pretrain import PretrainStage
from unicorn_datasets.stages.transfer import encode_batch, with_prior_identity

# The paper's own figures (shared/reference/unicorn.md), shown beside a plan of the paper's recipes.
PAPER = {"usd_per_sample": 0.0003, "synthesis_days": 12,
         "note": "Unicorn paper v2: $0.0003 API cost per sample, 12 days of synthesis for Unicorn-1.2M"}
PAPER_RECIPES = ("unicorn-1.2m", "unicorn-471k")
_SIMULATED = 200_000  # rows simulated exactly; beyond, the window's steady rate extends the makespan


@dataclass(frozen=True)
class Prices:
    """What the user pays: per GPU hour (x GPUs), or per million prompt / completion tokens."""

    gpu_hour: float | None = None
    gpus: int = 1
    per_mtok: tuple[float, float] | None = None

    def cost(self, seconds: float, prompt_tokens: float, completion_tokens: float) -> float | None:
        if self.per_mtok is not None:
            return prompt_tokens / 1e6 * self.per_mtok[0] + completion_tokens / 1e6 * self.per_mtok[1]
        if self.gpu_hour is not None:
            return seconds / 3600 * self.gpus * self.gpu_hour
        return None

    def describe(self) -> str:
        if self.per_mtok is not None:
            return f"${self.per_mtok[0]:g} / ${self.per_mtok[1]:g} per million prompt / completion tokens"
        if self.gpu_hour is not None:
            return f"{self.gpus} GPU(s) at ${self.gpu_hour:g} per GPU hour"
        return ""


def makespan(rows: int, row_times: list[float], window: int, seed: int = 0) -> tuple[float, float]:
    """Seconds for `rows` rows through a window of `window` slots, each row's time drawn from `row_times`;
    and of those, the drain: the time beyond `rows` x mean / window (the last rows' tail)."""
    if rows <= 0 or not row_times:
        return 0.0, 0.0
    rng = random.Random(seed)
    n = min(rows, _SIMULATED)
    slots: list[float] = []
    end = 0.0
    for _ in range(n):
        start = heapq.heappop(slots) if len(slots) >= window else 0.0
        done = start + rng.choice(row_times)
        end = max(end, done)
        heapq.heappush(slots, done)
    mean = sum(row_times) / len(row_times)
    return end + (rows - n) * mean / window, max(0.0, end - n * mean / window)


def server_seconds(rows: int, probe: StageProbe) -> float:
    """The build's window simulated with the probe's row times; when the probe saw a lower steady rate at the
    build's window than those times allow (a busy client, a saturated server), that rate carries the bulk."""
    total, drain = makespan(rows, probe.row_times(), probe.window)
    rate = probe.steady_rate
    return max(total, rows / rate + drain) if rate else total


def task_counts(captions: int, mix: dict[str, int | float], seed: int) -> tuple[dict[str, int], list[str]]:
    """Stage 2's rows per task for `captions` accepted captions (the build's `select_tasks`), and its warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = select_tasks([str(i) for i in range(captions)], mix, seed)
    counts: dict[str, int] = {}
    for task in chosen.values():
        counts[task] = counts.get(task, 0) + 1
    return counts, [str(w.message) for w in caught]


def _llm_stage(probe: StageProbe, rows: int) -> dict[str, Any]:
    requests = rows * probe.requests_per_row
    if probe.server:
        seconds = server_seconds(rows, probe)
    else:
        seconds = rows * probe.seconds / probe.rows if probe.rows else 0.0
    return {"rows": rows, "requests": round(requests), "prompt_tokens": round(requests * probe.per_request(
        probe.prompt_tokens)), "completion_tokens": round(requests * probe.per_request(probe.completion_tokens)),
        "seconds": round(seconds, 1), "accepted": round(rows * probe.accept_share)}


def _encode_seconds_per_row(ctx: Context, stage: PretrainStage, texts: list[str]) -> float:
    """One full encoder batch (after a warm-up call), timed: Stage 3's seconds per caption."""
    enc = ctx.encoder()
    batch = stage.cfg.batch_size
    texts = (texts * (batch // max(1, len(texts)) + 1))[:batch] if texts else ["a caption"] * batch
    encode_batch({"caption": texts[:2]}, encoder=enc, cfg=stage.cfg)
    t0 = time.monotonic()
    encode_batch({"caption": texts}, encoder=enc, cfg=stage.cfg)
    return (time.monotonic() - t0) / len(texts)


def make_plan(recipe: Recipe, *, probe_rows: int = 32, prices: Prices | None = None,
              trust_remote_code: bool = False) -> dict[str, Any]:
    """Probe the backend and predict every stage of `recipe`'s build. Bad seeds, a bad recipe or an
    unreachable backend fail before any probe request."""
    if probe_rows < 1:
        raise ValueError(f"--probe {probe_rows}: need at least 1 row per stage")
    seeds, _stats, selection = collect_seeds(recipe, trust_remote_code)  # bad input fails here, as in the build
    recipe = with_prior_identity(recipe)
    stages = plan_stages(recipe, seeds, recipe.shard_size)
    with tempfile.TemporaryDirectory(prefix="unicorn-plan-") as tmp:
        from unicorn_datasets.dataset.repo import BuildRepo

        ctx = Context(recipe, BuildRepo(tmp), make_state(), trust_remote_code=trust_remote_code)
        if selection.encoder is not None and selection.summary["encoder"] == recipe.transfer.encoder:
            ctx.loaded_encoder = selection.encoder
        return _probe_and_predict(ctx, recipe, stages, seeds, probe_rows, prices or Prices())


def _probe_and_predict(ctx: Context, recipe: Recipe, stages: list[Any], seeds: list[Any], probe_rows: int,
                       prices: Prices) -> dict[str, Any]:
    llm = recipe.llm
    backend = ctx.backend()
    check = getattr(backend, "check_available", None)
    if check is not None:
        check()  # a server that is down: one line before any probe request
    window = Engine(backend, max_in_flight=llm.max_in_flight, batches_per_call=llm.batches_per_call).max_in_flight
    out: dict[str, dict[str, Any]] = {}
    probes: dict[str, StageProbe] = {}
    notes: list[str] = []
    captions: dict[str, Any] = {}  # the probe's accepted Stage-1 captions: Stage 2's and 3's probe input
    accepted_rows = 0
    if recipe.limit is not None and len(seeds) < recipe.limit:
        notes.append(f"the seed sources yield {len(seeds):,} seeds, fewer than the recipe's limit of "
                     f"{recipe.limit:,}: the build has {len(seeds):,} Stage-1 rows")
    if any(isinstance(s, PretrainStage) for s in stages):
        ctx.encoder()  # an encoder that cannot load fails now, not after the probe's requests
    for stage in stages:
        if isinstance(stage, CaptionStage):
            stage.prepare(ctx)
            rows = stage.inputs(ctx).select(sample_rows(len(seeds), probe_rows, recipe.seed))
            log(f"plan: probing {stage.name} with {len(rows)} row(s), window {window}")
            probe = run_stage_probe(ctx, stage, rows, window=window)
            probes[stage.name], captions = probe, probe.accepted
            out[stage.name] = _llm_stage(probe, len(seeds))
            accepted_rows = out[stage.name]["accepted"]
        elif isinstance(stage, InstructStage):
            counts, warned = task_counts(accepted_rows, stage.mix, recipe.seed)
            notes += [f"{stage.name}: {w}" for w in warned]
            total = sum(counts.values())
            ids = sorted(captions)[:probe_rows]
            if not ids or not total:
                out[stage.name] = {"rows": total, "requests": None, "prompt_tokens": None,
                                   "completion_tokens": None, "seconds": None, "tasks": counts}
                notes.append(f"{stage.name}: not probed (the probe accepted no caption or the mix selects none)")
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # shares of 1 may round past the probe's captions by a hair
                chosen = select_tasks(ids, {t: c / total for t, c in counts.items()}, recipe.seed)
            stage.prepare(ctx)
            rows = datasets.Dataset.from_dict({"id": list(chosen), "caption": [captions[i] for i in chosen],
                                               "task": list(chosen.values())})
            log(f"plan: probing {stage.name} with {len(chosen)} row(s) (the probe's own captions)")
            probe = run_stage_probe(ctx, stage, rows, window=window)
            probes[stage.name] = probe
            out[stage.name] = {**_llm_stage(probe, total), "tasks": counts}
        elif isinstance(stage, PretrainStage):
            per_row = _encode_seconds_per_row(ctx, stage, [str(c) for c in captions.values()])
            out[stage.name] = {"rows": accepted_rows, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                               "seconds": round(accepted_rows * per_row, 1), "encode_seconds_per_row": per_row}
    if ctx.loaded_backend is not None:
        ctx.loaded_backend.close()
    return _assemble(recipe, out, probes, ctx.llm_describe(), window, notes, prices)


def _assemble(recipe: Recipe, stages: dict[str, dict[str, Any]], probes: dict[str, StageProbe],
              llm: dict[str, Any], window: int, notes: list[str], prices: Prices) -> dict[str, Any]:
    def total(key: str) -> float:
        return sum(s.get(key) or 0 for s in stages.values())

    seconds, prompt, completion = total("seconds"), total("prompt_tokens"), total("completion_tokens")
    cost = prices.cost(seconds, prompt, completion)
    tot: dict[str, Any] = {"seconds": round(seconds, 1), "completion_tokens": round(completion),
                           "cost_usd": None if cost is None else round(cost, 2), "prompt_tokens": round(prompt),
                           "requests": round(total("requests")), "pricing": prices.describe() or None}
    if recipe.name in PAPER_RECIPES:
        samples = sum(s["rows"] for name, s in stages.items() if name in probes)
        tot["paper"] = {**PAPER, "samples": samples, "usd": round(samples * PAPER["usd_per_sample"], 2)}
    return {"stages": stages, "total": tot,
            "probe": {"recipe": recipe.name, "fingerprint": recipe.fingerprint(), "llm": llm, "window": window,
                      "made": time.strftime("%Y-%m-%dT%H:%M:%S"), "notes": notes,
                      "stages": {name: p.summary() for name, p in probes.items()}}}
