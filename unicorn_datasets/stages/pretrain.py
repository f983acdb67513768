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
import pyarrow.parquet as pq

from unicorn_datasets.dataset.layout import ENCODER
from unicorn_datasets.pipeline.context import log
from unicorn_datasets.pipeline.shards import Shards, run_map
from unicorn_datasets.stages.captions import accepted_captions
from unicorn_datasets.stages.transfer import TransferConfig, encode_batch, shift_batch
from unicorn_datasets.transfer.methods import MeanAccumulator, reduce_states

if TYPE_CHECKING:
    from unicorn_datasets.dataset.repo import BuildRepo
    from unicorn_datasets.pipeline.context import Context


class PretrainStage:
    name = "pretrain"

    def __init__(self, cfg: TransferConfig, *, shard_size: int, build_seed: int) -> None:
        self.cfg, self.shard_size, self.build_seed = cfg, shard_size, build_seed
        self.info: dict[str, Any] = {}

    def provenance(self) -> dict[str, Any]:
        return self.info

    def run(self, ctx: Context) -> None:
        cfg, repo = self.cfg, ctx.repo
        encode = Shards.of(accepted_captions(repo), self.shard_size)
        sums_dir = repo.stage_dir("encode_sums")

        def make_encode() -> Callable[[dict[str, list]], dict[str, list]]:
            enc = ctx.encoder()
            return lambda batch: encode_batch(batch, encoder=enc, cfg=cfg)

        def save_sum(shard: int, table: pa.Table) -> None:
            emb = np.asarray(table.column("text_embedding").to_pylist(), dtype=np.float32)
            MeanAccumulator(emb.shape[1] if emb.size else None).add(emb).save(sums_dir / f"sum-{shard:05d}.npz")

        prior = cfg.load_prior(_encoder_info(ctx))  # --transfer prior: once per process; refused for another encoder
        run_map(ctx, "encode", encode, make_encode, batch_size=self.shard_size, on_part=save_sum)
        acc = reduce_states(sorted(sums_dir.glob("sum-*.npz")))  # fixed order: same bits under any world size
        mean = acc.mean()
        self.info = cfg.provenance(_encoder_info(ctx), acc.count, prior)
        if ctx.is_main:
            from unicorn_datasets.pipeline.assemble import save_transfer_artifacts

            save_transfer_artifacts(repo, mean, self.info)
        ctx.barrier()

        def load_encoded(i: int) -> datasets.Dataset:
            return datasets.Dataset(pq.read_table(repo.part_path("encode", i)))

        run_map(ctx, "pretrain", Shards(encode.rows, encode.count, load_encoded),
                lambda: lambda batch: shift_batch(batch, mean=mean, cfg=cfg, build_seed=self.build_seed, prior=prior),
                batch_size=self.shard_size)

    def assemble(self, repo: BuildRepo) -> dict[str, Any]:
        from unicorn_datasets.pipeline.assemble import assemble_pretrain

        return assemble_pretrain(repo, self.cfg, self.info)

    def resumed(self, repo: BuildRepo) -> None:
        """Complete in an earlier run: its provenance comes from that run's summary."""
        self.info = repo.stage_summary(self.name).get("transfer", {})


class InstructEmbeddings:
    """Joins Stage 3's embeddings into the `instruct` config by caption id (rank 0 only; no model)."""

    name = "instruct_embeddings"

    def __init__(self, instruct: Any) -> None:
        self.instruct = instruct

    def provenance(self) -> dict[str, Any]:
        return {}

    def run(self, ctx: Context) -> None:
        pass

    def assemble(self, repo: BuildRepo) -> dict[str, Any]:
        from unicorn_datasets.pipeline.assemble import assemble_instruct

        summary = repo.stage_summary("instruct")
        return assemble_instruct(repo, self.instruct.model_id, self.instruct.prompt_sha(),
                                 selected=summary.get("selected", 0), with_embeddings=True)


def _encoder_info(ctx: Context) -> dict[str, Any]:
    """Encoder provenance without loading the model when every shard was encoded earlier."""
    if ctx.loaded_encoder is not None:
        return ctx.loaded_encoder.describe()
    previous = ctx.repo.work / ENCODER
    if previous.exists():
        return json.loads(previous.read_text())
    log("encoder provenance: loading the encoder to describe it", ctx.rank)
    return ctx.encoder().describe()
