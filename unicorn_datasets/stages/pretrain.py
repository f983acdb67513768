"""Stage 3 as stages: caption text embeddings -> synthetic image embeddings (`pretrain`), then the join of
those embeddings into `instruct` (its own small step: Stage 2's output is never rewritten by Stage 3).

Pass 1 (`encode`) writes each caption's normalised text embedding and an exact float64 partial
sum per shard; the sums are reduced in a fixed order (same bits under any process count); pass 2
applies the transfer shard by shard from pass 1's parts, so memory stays one shard.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unicorn_datasets.dataset.layout import ENCODE, ENCODE_SUMS, ENCODER, TEXT_MEAN, artifact
from unicorn_datasets.pipeline.context import log
from unicorn_datasets.pipeline.shards import Shards, run_map
from unicorn_datasets.stages.assembly import embedding_matrix, fixed_list
from unicorn_datasets.stages.base import CONVERSATION, StageSpec, register
from unicorn_datasets.stages.captions import accepted_captions
from unicorn_datasets.stages.instruct.prompting import prompt_provenance
from unicorn_datasets.stages.instruct.stage import NAME as INSTRUCT
from unicorn_datasets.stages.instruct.stage import assemble_instruct
from unicorn_datasets.stages.transfer import (
    encode_batch,
    load_stage_prior,
    prior_card_text,
    save_transfer_artifacts,
    shift_batch,
    transfer_provenance,
)
from unicorn_datasets.transfer.methods import MeanAccumulator, reduce_states

if TYPE_CHECKING:
    from unicorn_datasets.dataset.repo import BuildRepo
    from unicorn_datasets.pipeline.context import Context
    from unicorn_datasets.recipe import Recipe, TransferSection

NAME = "pretrain"  # the stage, its work-area folder and its config


class PretrainStage:
    name = NAME

    def __init__(self, cfg: TransferSection, *, shard_size: int, build_seed: int) -> None:
        self.cfg, self.shard_size, self.build_seed = cfg, shard_size, build_seed
        self.info: dict[str, Any] = {}

    def provenance(self) -> dict[str, Any]:
        return self.info

    def run(self, ctx: Context) -> None:
        cfg, repo = self.cfg, ctx.repo
        encode = Shards.of(accepted_captions(repo), self.shard_size)
        sums_dir = repo.stage_dir(ENCODE_SUMS)

        def make_encode() -> Callable[[dict[str, list]], dict[str, list]]:
            enc = ctx.encoder()
            return lambda batch: encode_batch(batch, encoder=enc, cfg=cfg)

        def save_sum(shard: int, table: pa.Table) -> None:
            emb = np.asarray(table.column("text_embedding").to_pylist(), dtype=np.float32)
            MeanAccumulator(emb.shape[1] if emb.size else None).add(emb).save(sums_dir / f"sum-{shard:05d}.npz")

        prior = load_stage_prior(cfg, _encoder_info(ctx))  # once per process; refused for another encoder
        run_map(ctx, ENCODE, encode, make_encode, batch_size=self.shard_size, on_part=save_sum)
        acc = reduce_states(sorted(sums_dir.glob("sum-*.npz")))  # fixed order: same bits under any world size
        mean = acc.mean()
        self.info = transfer_provenance(cfg, _encoder_info(ctx), acc.count, prior)
        if ctx.is_main:
            save_transfer_artifacts(repo, mean, self.info)
        ctx.barrier()

        def load_encoded(i: int) -> datasets.Dataset:
            return datasets.Dataset(pq.read_table(repo.part_path(ENCODE, i)))

        run_map(ctx, self.name, Shards(encode.rows, encode.count, load_encoded),
                lambda: lambda batch: shift_batch(batch, mean=mean, cfg=cfg, build_seed=self.build_seed, prior=prior),
                batch_size=self.shard_size)

    def assemble(self, repo: BuildRepo) -> dict[str, Any]:
        return assemble_pretrain(repo, self.cfg, self.info)

    def resumed(self, repo: BuildRepo) -> None:
        """Complete in an earlier run: its provenance comes from that run's summary."""
        self.info = repo.stage_summary(self.name).get("transfer", {})


class InstructEmbeddings:
    """Joins Stage 3's embeddings into the `instruct` config by caption id (rank 0 only; no model)."""

    name = "instruct_embeddings"

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    def provenance(self) -> dict[str, Any]:
        return {}

    def run(self, ctx: Context) -> None:
        pass

    def assemble(self, repo: BuildRepo) -> dict[str, Any]:
        summary = repo.stage_summary(INSTRUCT)
        return assemble_instruct(repo, self.model_id, json.dumps(prompt_provenance(), sort_keys=True),
                                 selected=summary.get("selected", 0), embeddings_from=NAME)


def _encoder_info(ctx: Context) -> dict[str, Any]:
    """Encoder provenance without loading the model when every shard was encoded earlier."""
    if ctx.loaded_encoder is not None:
        return ctx.loaded_encoder.describe()
    previous = ctx.repo.work / ENCODER
    if previous.exists():
        return json.loads(previous.read_text())
    log("encoder provenance: loading the encoder to describe it", ctx.rank)
    return ctx.encoder().describe()


def assemble_pretrain(repo: BuildRepo, cfg: TransferSection, transfer_info: dict[str, Any]) -> dict[str, Any]:
    """The pretrain config from the pass-2 parts (every row: Stage 3 rejects none), and the stage's summary."""
    schema: pa.Schema | None = None
    for t in repo.read_parts(NAME, ["embedding"]):
        if t.num_rows:
            dim = len(t.column("embedding")[0])
            dtype = pa.float16() if cfg.embedding_dtype == "float16" else pa.float32()
            schema = pa.schema(
                [
                    ("id", pa.string()),
                    ("caption", pa.string()),
                    ("conversations", CONVERSATION),
                    ("embedding", pa.list_(dtype, dim)),
                ]
            )
            break
    if schema is None:
        raise RuntimeError("pretrain: no captions to transfer (every Stage-1 row was rejected)")

    def tables():
        for t in repo.read_parts(NAME):
            mat = embedding_matrix(t.column("embedding"))
            t = t.set_column(
                t.schema.get_field_index("embedding"), "embedding", fixed_list(mat, schema.field("embedding").type)
            )
            yield t.select(schema.names)

    files = repo.write_config(NAME, tables(), schema)
    rows = sum(t.num_rows for t in repo.read_parts(NAME, ["id"]))
    truncated = sum(pc.sum(t.column("truncated")).as_py() or 0 for t in repo.read_parts(ENCODE, ["truncated"]))
    return {
        "rows_in": rows,
        "rows_out": rows,
        "rejected": {},
        "files": files,
        "transfer": transfer_info,
        "dim": schema.field("embedding").type.list_size,
        "truncated_by_encoder": int(truncated),
    }


def _make(recipe: Recipe, seeds: list[Any], shard_size: int) -> PretrainStage:
    transfer = recipe.transfer
    return PretrainStage(transfer, shard_size=transfer.shard_size or shard_size,
                         build_seed=recipe.seed)


def _card_text(recipe: dict[str, Any], stages: dict[str, Any]) -> str:
    s = stages[NAME]
    t = s.get("transfer", {})
    enc = t.get("encoder", {})
    return (
        f"3. **Transfer**: captions encoded with `{enc.get('encoder', enc.get('path'))}` "
        f"({s.get('dim')}-d, "
        f"L2-normalised), method `{t.get('method')}` (renormalise: {t.get('renormalize')}, noise sigma: "
        f"{t.get('noise_sigma')}); the text mean over {t.get('count')} captions is in `{artifact(TEXT_MEAN)}`; "
        f"{s.get('truncated_by_encoder', 0)} caption(s) were cut by the encoder's token limit. "
        "At inference on real images, subtract the mean of the image set (`unicorn embed-images`)."
        + prior_card_text(t.get("prior"))
    )


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    return [f"Stage 3: {summary.get('dim')}-d embeddings, {summary.get('truncated_by_encoder', 0)} caption(s) "
            "truncated by the encoder's token limit"]


SPEC = register(StageSpec(
    name=NAME, make=_make, enabled=lambda recipe: NAME in recipe.stages, config=NAME, steps=(ENCODE, NAME),
    about="Stage 3: caption + synthetic image `embedding` + LLaVA `conversations` for projector pretraining.",
    card_text=_card_text, summary_lines=_summary_lines,
))
EMBEDDINGS_SPEC = register(StageSpec(
    name=InstructEmbeddings.name, make=lambda recipe, seeds, shard_size: InstructEmbeddings(recipe.llm.model),
    enabled=lambda recipe: INSTRUCT in recipe.stages and NAME in recipe.stages, steps=(),
))
