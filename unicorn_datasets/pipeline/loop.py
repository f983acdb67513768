"""The build: seeds, then a loop over the recipe's stages, then the manifest, card and summary (rank 0).

Each stage runs this rank's share of its shards; after a barrier rank 0 assembles the stage's
config and marks it complete, so a rerun skips finished stages and, within a stage, finished shards.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import datasets

from unicorn_datasets import __version__
from unicorn_datasets.dataset.layout import REJECTIONS, SEED_CLUSTERS, artifact
from unicorn_datasets.dataset.rejections import write_rejections
from unicorn_datasets.dataset.repo import BuildRepo, RepoError
from unicorn_datasets.dataset.verify import heal
from unicorn_datasets.errors import BuildError
from unicorn_datasets.pipeline.context import Context, log, make_state
from unicorn_datasets.pipeline.finish import finish
from unicorn_datasets.pipeline.preflight import probe_servers_first
from unicorn_datasets.recipe import Recipe, fingerprint
from unicorn_datasets.stages import registered, spec_of
from unicorn_datasets.stages.transfer import with_prior_identity

if TYPE_CHECKING:
    from unicorn_datasets.stages.base import Stage


def collect_seeds(recipe: Recipe, trust_remote_code: bool = False) -> tuple[list[Any], dict[str, Any], Any]:
    """(seeds, per-source stats, the balance.Selection); seeds/mix.py loads the sources and applies the mix."""
    from unicorn_datasets.seeds.mix import plan_seeds

    if not recipe.seeds:
        raise BuildError("the recipe names no seed sources")
    plan = plan_seeds(recipe, trust_remote_code)
    for note in plan.notes:  # unmeetable shares, a limit above what the sources hold: said before generation
        log(note)
    stats: dict[str, Any] = {p.spec.path: p.stats for p in plan.sources}
    stats["balance"] = plan.selection.summary
    stats["mix"] = plan.mix()
    return plan.selection.seeds, stats, plan.selection


def plan_stages(recipe: Recipe, seeds: list[Any], shard_size: int) -> list[Stage]:
    """The registered stages the recipe asks for, in build order, each made from its own recipe section."""
    return [spec.make(recipe, seeds, shard_size) for spec in registered() if spec.enabled(recipe)]


def rejection_inputs() -> dict[str, str]:
    """{stage: the part column its rejections record as input} for every registered stage that rejects rows."""
    return {spec.name: spec.reject_input for spec in registered() if spec.reject_input}


def _run_stage(ctx: Context, stage: Stage) -> None:
    if ctx.repo.stage_complete(stage.name):
        log(f"{stage.name}: complete in an earlier run (skipped)", ctx.rank)
        resumed = getattr(stage, "resumed", None)
        if resumed is not None:
            resumed(ctx.repo)
    else:
        stage.run(ctx)
        if ctx.is_main:
            summary = stage.assemble(ctx.repo)
            if spec_of(stage.name).reject_input:  # rows in = rows out + rejections, for every such stage
                write_rejections(ctx.repo, rejection_inputs())
            ctx.repo.mark_stage_complete(stage.name, summary)
        ctx.barrier()
    prov = stage.provenance()
    if prov:
        ctx.provenance[stage.name] = prov


def _merge_stats(per_rank: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Every rank's run statistics summed (shard totals and wall seconds: the largest)."""
    merged: dict[str, dict[str, Any]] = {}
    for stats in per_rank:
        for stage, s in stats.items():
            m = merged.setdefault(stage, {})
            for k, v in s.items():
                m[k] = max(m.get(k, 0), v) if k in ("shards_total", "seconds") else m.get(k, 0) + v
    return merged


def _start(ctx: Context, recipe: Recipe, fp: str, overwrite: bool) -> bool:
    """Rank 0 checks the folder, takes the lock and writes the state; every rank learns the outcome."""
    error, resumed = None, False
    if ctx.is_main:
        try:
            ctx.repo.check_target(overwrite)
            ctx.repo.acquire_lock()
            resumed = ctx.repo.start(recipe.to_dict(), fp, overwrite=overwrite)
            if resumed:  # what a rerun trusts is checked first; damaged parts and configs are made again
                for finding in heal(ctx.repo.out, ctx.repo.work):
                    log(finding)
        except RepoError as e:
            error = str(e)
    error, resumed = ctx.broadcast((error, resumed))
    if error:
        raise BuildError(error)
    return resumed


def build(
    recipe: Recipe, *, out: str, overwrite: bool = False, trust_remote_code: bool = False, plan: str | None = None
) -> dict[str, Any]:
    """`plan`: a file saved by `unicorn plan --save`; the manifest and card then show predicted vs actual."""
    t0 = time.monotonic()
    datasets.disable_progress_bars()  # our own bars count rows across ranks
    seeds, seed_stats, selection = collect_seeds(recipe, trust_remote_code)  # bad input fails here
    recipe = with_prior_identity(recipe)  # a missing or unreadable prior fails here too
    ctx = Context(recipe, BuildRepo(out), make_state(), trust_remote_code=trust_remote_code)
    if selection.encoder is not None and selection.summary["encoder"] == recipe.transfer.encoder:
        ctx.loaded_encoder = selection.encoder  # balancing loaded Stage 3's encoder already: load it once
    fp = fingerprint(recipe)
    from unicorn_datasets.pipeline.plan_report import load_plan

    predicted = load_plan(plan, fp) if plan else None  # a plan for other settings: refused before any write
    probe_servers_first(ctx)  # a server that is down: one line, and OUT is not created
    try:
        resumed = _start(ctx, recipe, fp, overwrite)
        if ctx.is_main and selection.clusters is not None:  # the balanced selection, for the report's histograms
            from unicorn_datasets.dataset.repo import write_parquet

            write_parquet(selection.clusters, ctx.repo.artifacts() / SEED_CLUSTERS)
        if ctx.is_main:
            log(f"{'resuming' if resumed else 'starting'} build of recipe '{recipe.name}' into {out} "
                f"({len(seeds)} seeds, {ctx.world} process(es), fingerprint {fp})")
        for stage in plan_stages(recipe, seeds, ctx.shard_size):
            _run_stage(ctx, stage)
        stats = _merge_stats(ctx.gather(ctx.run_stats))
        summary: dict[str, Any] = {}
        error = None
        if ctx.is_main:
            llm = ctx.llm_describe()
            summary = finish(ctx.repo, recipe.to_dict(), fp, seed_stats, len(seeds), ctx.provenance, stats, llm=llm,
                             code_version=__version__, started=t0, plan=predicted,
                             encoders={recipe.transfer.encoder: ctx.loaded_encoder} if ctx.loaded_encoder else None)
            empty = [s for s, v in summary["stages"].items() if v.get("rows_out", 1) == 0]
            if empty:
                error = (f"{', '.join(empty)}: every row was rejected, so the dataset has no such config "
                         f"(reasons in the summary above, raw outputs in {artifact(REJECTIONS)})")
        error = ctx.broadcast(error)
        if error:
            raise BuildError(error)
        return summary
    finally:
        ctx.close()
        if ctx.is_main:
            ctx.repo.release_lock()
