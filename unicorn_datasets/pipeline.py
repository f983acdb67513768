"""The build: seeds -> Stage 1 captions -> Stage 2 instructions -> Stage 3 transfer, as sharded maps.

Work is cut into fixed-size shards of a deterministic row order; shard i belongs to rank
i % world_size, so any process count (1, 2, N GPUs, several nodes) covers the same shards and
a build killed under one count resumes under another. Each shard is a batched `Dataset.map`
whose result lands atomically as a part file; rank 0 alone assembles configs, card and manifest.
Global statistics (the Stage-3 text mean) are reduced exactly from per-shard float64 sums.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .progress import StageProgress
from .recipe import fingerprint
from .repo import BuildRepo, RepoError
from .seeds import SeedStats, load_caption_seeds, load_domain_seeds, merge_and_limit


class BuildError(RuntimeError):
    pass


def log(msg: str, rank: int | None = None) -> None:
    prefix = f"[unicorn rank {rank}]" if rank is not None else "[unicorn]"
    print(f"{prefix} {msg}", file=sys.stderr, flush=True)


@dataclass
class Context:
    recipe: dict[str, Any]
    repo: BuildRepo
    state: Any  # accelerate.PartialState
    trust_remote_code: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    run_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    _backend: Any = None
    _encoder: Any = None

    @property
    def rank(self) -> int:
        return self.state.process_index

    @property
    def world(self) -> int:
        return self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def build_seed(self) -> int:
        return int(self.recipe.get("seed", 0))

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    def backend(self) -> Any:
        if self._backend is None:
            from .generation import make_backend

            self._backend = make_backend(self.recipe.get("llm", {}), device=str(self.state.device))
        return self._backend

    def encoder(self) -> Any:
        if self._encoder is None:
            from .encoders import load_encoder

            t = self.recipe.get("transfer", {})
            self._encoder = load_encoder(
                t.get("encoder", "minilm"), device=str(self.state.device), trust_remote_code=self.trust_remote_code
            )
        return self._encoder


# ---- seeds -----------------------------------------------------------------------------------
def collect_seeds(recipe: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    groups, stats = [], {}
    for spec in recipe.get("seeds", []):
        st = SeedStats()
        if spec.get("kind", "captions") == "domains":
            group = load_domain_seeds(
                spec["path"],
                templates_per_label=int(spec.get("templates_per_label", 10)),
                seed=int(recipe.get("seed", 0)),
                stats=st,
            )
        else:
            group = load_caption_seeds(
                spec["path"],
                column=spec.get("column"),
                source=spec.get("source"),
                min_words=int(spec.get("min_words", 2)),
                max_words=int(spec.get("max_words", 120)),
                stats=st,
            )
        groups.append(group)
        stats[spec["path"]] = {**st.as_dict(), "kept": len(group)}
    if not groups:
        raise BuildError("the recipe names no seed sources")
    limit = recipe.get("limit")
    chosen = merge_and_limit(groups, limit=int(limit) if limit is not None else None, seed=int(recipe.get("seed", 0)))
    return chosen, stats


# ---- the sharded map ------------------------------------------------------------------------
def slices(ds: datasets.Dataset, shard_size: int) -> tuple[int, int, Callable[[int], datasets.Dataset]]:
    """(rows, shards, load_shard) for a dataset cut into consecutive fixed-size shards."""
    n_shards = math.ceil(len(ds) / shard_size) if len(ds) else 0
    return len(ds), n_shards, lambda i: ds.select(range(i * shard_size, min((i + 1) * shard_size, len(ds))))


def run_sharded(
    ctx: Context,
    stage: str,
    shards: tuple[int, int, Callable[[int], datasets.Dataset]],
    make_fn: Callable[[], Callable[[dict[str, list]], dict[str, list]]],
    *,
    map_batch_size: int,
    on_part: Callable[[int, pa.Table], None] | None = None,
) -> None:
    """Run `make_fn()` as a batched map over this rank's unfinished shards; one part file per shard.

    `on_part(shard, table)` runs before the part lands (e.g. to save a partial sum), so a part's
    existence still means everything about that shard is on disk."""
    repo = ctx.repo
    n_rows, n_shards, load_shard = shards
    mine = [i for i in range(n_shards) if i % ctx.world == ctx.rank]
    if ctx.is_main:
        stale = repo.remove_stale_tmp(stage)
        if stale:
            log(f"{stage}: removed {stale} half-written part(s) left by an interrupted run")
    ctx.barrier()
    done = repo.done_shards(stage)
    todo = [i for i in mine if i not in done]
    stats = ctx.run_stats.setdefault(
        stage,
        {
            "shards_total": n_shards,
            "shards_skipped": 0,
            "shards_run": 0,
            "rows_run": 0,
            "tokens_run": 0,
            "seconds": 0.0,
        },
    )
    stats["shards_skipped"] += len(mine) - len(todo)
    log(
        f"{stage}: {n_shards} shards in all; this rank has {len(mine)}: {len(mine) - len(todo)} finished earlier "
        f"(skipped), {len(todo)} to run",
        ctx.rank,
    )

    def rows_done() -> int:
        return sum(m.get("rows", 0) for m in repo.part_meta(stage))

    progress = StageProgress(stage, n_rows, enabled=ctx.is_main, done_rows=rows_done)
    fn = make_fn() if todo else None
    t_stage = time.monotonic()
    for i in todo:
        t0 = time.monotonic()
        shard = load_shard(i)

        def tracked(batch: dict[str, list], _fn: Callable = fn) -> dict[str, list]:  # type: ignore[assignment]
            out = _fn(batch)
            progress.advance(len(next(iter(batch.values()))))
            return out

        # new_fingerprint: the function holds a model; hashing it would pickle the weights.
        result = shard.map(
            tracked,
            batched=True,
            batch_size=map_batch_size,
            new_fingerprint=f"{stage}-{i}-{os.getpid()}",
            remove_columns=shard.column_names,
            load_from_cache_file=False,
            keep_in_memory=True,
        )
        table = result.data.table.combine_chunks()
        tokens = int(sum(table.column("n_tokens").to_pylist())) if "n_tokens" in table.column_names else 0
        rejected = (
            sum(r is not None for r in table.column("reject_reason").to_pylist())
            if "reject_reason" in table.column_names
            else 0
        )
        secs = time.monotonic() - t0
        if on_part is not None:
            on_part(i, table)
        repo.write_part(stage, i, table, {"rows": table.num_rows, "tokens": tokens, "seconds": secs, "rank": ctx.rank})
        stats["shards_run"] += 1
        stats["rows_run"] += table.num_rows
        stats["tokens_run"] += tokens
        progress.shard_finished()
        log(
            f"{stage}: shard {i} done ({table.num_rows} rows, {rejected} rejected, {tokens} tokens, {secs:.1f}s)",
            ctx.rank,
        )
    stats["seconds"] += time.monotonic() - t_stage
    ctx.barrier()
    progress.close()


def _gather_stats(ctx: Context) -> dict[str, dict[str, Any]]:
    """Sum every rank's run statistics onto rank 0 (for the summary)."""
    if ctx.world == 1:
        return ctx.run_stats
    from accelerate.utils import gather_object

    merged: dict[str, dict[str, Any]] = {}
    for per_rank in gather_object([ctx.run_stats]):
        for stage, s in per_rank.items():
            m = merged.setdefault(stage, {k: 0 for k in s})
            for k, v in s.items():
                m[k] = max(m[k], v) if k in ("shards_total", "seconds") else m[k] + v
    return merged


# ---- stages ---------------------------------------------------------------------------------
def run_llm_stage(
    ctx: Context,
    stage: str,
    inputs: datasets.Dataset,
    batch_fn: Callable[..., dict[str, list]],
    assemble: Callable[[], dict[str, Any]],
) -> None:
    """An LLM stage: `batch_fn(batch, backend)` as a sharded map, then rank 0 assembles the config."""

    def make_fn() -> Callable[[dict[str, list]], dict[str, list]]:
        backend = ctx.backend()  # loaded only when this rank has shards left to run
        return lambda batch: batch_fn(batch, backend)

    run_sharded(ctx, stage, slices(inputs, _shard_size(ctx)), make_fn, map_batch_size=_map_batch(ctx))
    if ctx.is_main:
        ctx.repo.mark_stage_complete(stage, assemble())
    ctx.barrier()


def _already_complete(ctx: Context, stage: str) -> bool:
    if ctx.repo.stage_complete(stage):
        log(f"{stage}: complete in an earlier run (skipped)", ctx.rank)
        return True
    return False


def stage_captions(ctx: Context, seeds: list[Any]) -> None:
    from .assemble import assemble_captions
    from .stages.captions import CaptionConfig, expand_batch

    llm = ctx.recipe.get("llm", {})
    cfg = CaptionConfig.from_recipe(ctx.recipe.get("captions", {}), llm.get("prompt_mode", "chat"))
    ctx.provenance["captions"] = cfg.provenance()
    if _already_complete(ctx, "captions"):
        return
    inputs = datasets.Dataset.from_dict(
        {"id": [s.id for s in seeds], "seed": [s.seed for s in seeds], "source": [s.source for s in seeds]}
    )
    run_llm_stage(
        ctx, "captions", inputs,
        lambda batch, backend: expand_batch(batch, backend=backend, cfg=cfg, build_seed=ctx.build_seed),
        lambda: assemble_captions(ctx.repo, _llm_id(ctx), cfg.provenance()["prompt_sha"]),
    )


def _shard_size(ctx: Context) -> int:
    return int(ctx.recipe.get("shard_size", 64))


def _map_batch(ctx: Context) -> int:
    llm = ctx.recipe.get("llm", {})
    return int(llm.get("map_batch_size", int(llm.get("batch_size", 8)) * int(llm.get("batches_per_call", 4))))


def _llm_id(ctx: Context) -> str:
    """The model id recorded in every row (the endpoint URLs live in the manifest, not in rows)."""
    return str(ctx.recipe.get("llm", {}).get("model"))


def accepted_captions(repo: BuildRepo) -> datasets.Dataset:
    """Stage-1 captions (accepted rows only), ordered by id: the input of Stages 2 and 3.

    Raises BuildError when Stage 1 accepted nothing: a later stage has no input."""
    schema = pa.schema([("id", pa.string()), ("caption", pa.string())])
    # cast: a part whose rows were all rejected has a null-typed caption column
    tables = [t.cast(schema) for t in repo.read_parts("captions", ["id", "caption"])]
    table = pa.concat_tables([t.filter(pc.is_valid(t.column("caption"))) for t in tables] or [schema.empty_table()])
    if table.num_rows == 0:
        rejected = repo.stage_summary("captions").get("rejected", {})
        raise BuildError(
            f"Stage 1 accepted no caption (rejections: {rejected or 'none'}); nothing for the next stages. "
            "See artifacts/rejections.parquet for the raw outputs, then adjust the recipe (e.g. captions.min_words)."
        )
    return datasets.Dataset(table.sort_by("id"))


def stage_instruct(ctx: Context) -> None:
    from .assemble import assemble_instruct
    from .stages.instructions import generate_instructions, select_tasks

    section = ctx.recipe.get("instruct", {})
    cfg = _instruct_config(ctx)
    if _already_complete(ctx, "instruct"):
        return
    caps = accepted_captions(ctx.repo)
    mix = section.get("mix", {"mc": 1 / 3, "qa": 1 / 3, "reasoning": 1 / 3})
    chosen = select_tasks(caps["id"], mix, ctx.build_seed)
    inputs = caps.select([i for i, rid in enumerate(caps["id"]) if rid in chosen])
    inputs = inputs.add_column("task", [chosen[r] for r in inputs["id"]])
    run_llm_stage(
        ctx, "instruct", inputs,
        lambda batch, backend: generate_instructions(batch, backend=backend, cfg=cfg, seed=ctx.build_seed),
        lambda: assemble_instruct(ctx.repo, _llm_id(ctx), _instruct_sha(ctx), selected=len(inputs)),
    )


def stage_pretrain(ctx: Context) -> None:
    import pyarrow.parquet as pq

    from .stages.transfer_stage import TransferConfig, encode_batch, shift_batch
    from .transfer import MeanAccumulator, reduce_states

    cfg = TransferConfig.from_recipe(ctx.recipe.get("transfer", {}))
    if _already_complete(ctx, "pretrain"):
        ctx.provenance["transfer"] = ctx.repo.stage_summary("pretrain").get("transfer", {})
        return
    prior = cfg.load_prior(_encoder_info(ctx))  # --transfer prior: once per process; refused for another encoder
    caps = accepted_captions(ctx.repo)
    shard_size = int(ctx.recipe.get("transfer", {}).get("shard_size", _shard_size(ctx)))
    sums_dir = ctx.repo.stage_dir("encode_sums")

    def make_encode() -> Callable[[dict[str, list]], dict[str, list]]:
        enc = ctx.encoder()
        return lambda batch: encode_batch(batch, encoder=enc, cfg=cfg)

    def save_sum(shard: int, table: pa.Table) -> None:
        emb = np.asarray(table.column("text_embedding").to_pylist(), dtype=np.float32)
        MeanAccumulator(emb.shape[1] if emb.size else None).add(emb).save(sums_dir / f"sum-{shard:05d}.npz")

    # pass 1: normalised text embeddings + exact float64 partial sums per shard
    encode_shards = slices(caps, shard_size)
    run_sharded(ctx, "encode", encode_shards, make_encode, map_batch_size=shard_size, on_part=save_sum)
    acc = reduce_states(sorted(sums_dir.glob("sum-*.npz")))  # fixed order: same bits under any world size
    mean = acc.mean()
    transfer_info = cfg.provenance(_encoder_info(ctx), acc.count, prior)
    if ctx.is_main:
        from .assemble import save_transfer_artifacts

        save_transfer_artifacts(ctx.repo, mean, transfer_info)
    ctx.provenance["transfer"] = transfer_info
    ctx.barrier()

    # pass 2: the transfer itself, shard by shard from pass 1's parts (memory stays one shard)
    def load_encoded(i: int) -> datasets.Dataset:
        return datasets.Dataset(pq.read_table(ctx.repo.part_path("encode", i)))

    run_sharded(
        ctx,
        "pretrain",
        (encode_shards[0], encode_shards[1], load_encoded),
        lambda: lambda batch: shift_batch(batch, mean=mean, cfg=cfg, build_seed=ctx.build_seed, prior=prior),
        map_batch_size=shard_size,
    )
    if ctx.is_main:
        from .assemble import assemble_instruct, assemble_pretrain

        summary = assemble_pretrain(ctx.repo, cfg, transfer_info)
        if ctx.repo.stage_complete("instruct"):
            assemble_instruct(
                ctx.repo,
                _llm_id(ctx),
                _instruct_sha(ctx),
                selected=ctx.repo.stage_summary("instruct").get("selected", 0),
                with_embeddings=True,
            )
        ctx.repo.mark_stage_complete("pretrain", summary)
    ctx.barrier()


def _instruct_config(ctx: Context) -> Any:
    from .generation.base import SamplingParams
    from .stages.instructions import InstructConfig, prompt_provenance

    section = ctx.recipe.get("instruct", {})
    keys = ("max_attempts", "max_verbatim_fraction", "min_verbatim_words", "constrained", "truncate_extra_items",
            "max_chars")
    cfg = InstructConfig(
        item_bounds={t: tuple(b) for t, b in section.get("items", {}).items()},
        prompt_mode=ctx.recipe.get("llm", {}).get("prompt_mode", "auto"),
        sampling=SamplingParams(**section.get("sampling", {})),
        **{k: section[k] for k in keys if k in section},
    )
    ctx.provenance["instruct"] = {
        "prompt_sha": prompt_provenance(cfg),
        "item_bounds": cfg.item_bounds,
        "prompt_mode": cfg.prompt_mode,
        "constrained": cfg.constrained,
        "max_attempts": cfg.max_attempts,
        "sampling": cfg.sampling.as_dict(),
        "max_verbatim_fraction": cfg.max_verbatim_fraction,
        "mix": section.get("mix"),
    }
    return cfg


def _instruct_sha(ctx: Context) -> str:
    import json

    return json.dumps(ctx.provenance.get("instruct", {}).get("prompt_sha", ""), sort_keys=True)


def _encoder_info(ctx: Context) -> dict[str, Any]:
    """Encoder provenance without loading the model when every shard was encoded earlier."""
    if ctx._encoder is not None:
        return ctx._encoder.describe()
    previous = ctx.repo.work / "encoder.json"
    if previous.exists():
        import json

        return json.loads(previous.read_text())
    return ctx.encoder().describe()


# ---- the whole build ------------------------------------------------------------------------
def _state() -> Any:
    import torch
    from accelerate import PartialState

    # CPU-only machines still get a real gloo group under `accelerate launch --multi_gpu`.
    # Ranks that finish early wait at barriers for the slowest: a long timeout, not the 30 min default.
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=72))


def build(
    recipe: dict[str, Any], *, out: str, overwrite: bool = False, trust_remote_code: bool = False
) -> dict[str, Any]:
    t0 = time.monotonic()
    datasets.disable_progress_bars()  # our own bars count rows across ranks
    # Bad input fails here, before anything exists on disk.
    seeds, seed_stats = collect_seeds(recipe)
    from .stages.transfer_stage import with_prior_identity

    recipe = with_prior_identity(recipe)
    state = _state()
    repo = BuildRepo(out)
    fp = fingerprint(recipe)
    error, resumed = None, False
    if state.is_main_process:
        try:
            repo.check_target(overwrite)
            repo.acquire_lock()
            resumed = repo.start(recipe, fp, overwrite=overwrite)
        except RepoError as e:
            error = str(e)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error, resumed = broadcast_object_list([error, resumed])
    if error:
        raise BuildError(error)
    ctx = Context(recipe, repo, state, trust_remote_code=trust_remote_code)
    if state.is_main_process:
        log(
            f"{'resuming' if resumed else 'starting'} build of recipe '{recipe.get('name')}' into {out} "
            f"({len(seeds)} seeds, {state.num_processes} process(es), fingerprint {fp})"
        )
    stages = recipe.get("stages", ["captions"])
    try:
        stage_captions(ctx, seeds)
        if "instruct" in stages:
            stage_instruct(ctx)
        if "pretrain" in stages:
            stage_pretrain(ctx)
        stats = _gather_stats(ctx)
        summary: dict[str, Any] = {}
        if ctx.is_main:
            from .assemble import finish

            summary = finish(
                ctx.repo,
                recipe,
                fp,
                seed_stats,
                len(seeds),
                ctx.provenance,
                stats,
                llm=ctx._backend.describe() if ctx._backend else {"model": _llm_id(ctx)},
                code_version=__version__,
                wall=time.monotonic() - t0,
            )
            empty = [s for s, v in summary["stages"].items() if v.get("rows_out", 1) == 0]
            if empty:
                error = (f"{', '.join(empty)}: every row was rejected, so the dataset has no such config "
                         "(reasons in the summary above, raw outputs in artifacts/rejections.parquet)")
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            error = broadcast_object_list([error])[0]
        if error:
            raise BuildError(error)
    finally:
        if state.is_main_process:
            repo.release_lock()
    return summary
