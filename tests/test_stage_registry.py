"""A stage is one registration: a toy stage defined and registered here, and nowhere else, is built by the
normal build and lands in its config, the rejections table, the manifest and the card like the built-in ones."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_dataset

from unicorn_datasets.pipeline.loop import build
from unicorn_datasets.pipeline.shards import Shards, run_map
from unicorn_datasets.recipe import load_recipe
from unicorn_datasets.stages import StageSpec, register, registered, unregister
from unicorn_datasets.stages.assembly import Tally, accepted
from unicorn_datasets.stages.captions import accepted_captions
from unicorn_datasets.testing.fake_openai_server import serve

TOY = "uppercase"
REASON = "first_of_batch"
TOY_SCHEMA = pa.schema([("id", pa.string()), ("caption", pa.string())])
TOY_PART = pa.schema([("id", pa.string()), ("caption", pa.string()), ("source_caption", pa.string()),
                      ("reject_reason", pa.string())])


class Uppercase:
    """A model-free stage: each accepted caption in upper case; the first row of every batch is rejected."""

    name = TOY

    def __init__(self, shard_size: int) -> None:
        self.shard_size = shard_size

    def provenance(self) -> dict[str, Any]:
        return {"case": "upper"}

    def run(self, ctx: Any) -> None:
        def make_fn() -> Callable[[dict[str, list]], dict[str, list]]:
            def fn(batch: dict[str, list]) -> dict[str, list]:
                first = [i == 0 for i in range(len(batch["id"]))]
                return {"id": batch["id"],
                        "caption": [None if f else c.upper() for f, c in zip(first, batch["caption"], strict=True)],
                        "source_caption": batch["caption"], "reject_reason": [REASON if f else None for f in first]}
            return fn

        run_map(ctx, self.name, Shards.of(accepted_captions(ctx.repo), self.shard_size), make_fn,
                batch_size=self.shard_size)

    def assemble(self, repo: Any) -> dict[str, Any]:
        tally = Tally()
        tables = (accepted(tally.add(t.cast(TOY_PART)), "caption").select(TOY_SCHEMA.names)
                  for t in repo.read_parts(self.name))
        files = repo.write_config(TOY, tables, TOY_SCHEMA)
        return {**tally.summary(), "files": files}


@pytest.fixture
def toy_stage() -> Iterator[StageSpec]:
    spec = register(StageSpec(
        name=TOY, make=lambda recipe, seeds, shard_size: Uppercase(shard_size), enabled=lambda recipe: True,
        config=TOY, part_schema=TOY_PART, reject_input="source_caption", about="Toy: the captions in upper case.",
        card_text=lambda recipe, stages: f"4. **Uppercase**: {stages[TOY]['rows_out']} captions shouted.",
    ))
    yield spec
    unregister(TOY)


def test_a_registered_stage_is_built_published_and_accounted_for(toy_stage: StageSpec, tmp_path: Path) -> None:
    assert registered()[-1] is toy_stage
    out = tmp_path / "ds"
    with serve(median=0.001, p99=0.002) as server:
        recipe = load_recipe("demo", {"limit": 5, "stages": ["captions"], "shard_size": 3, "llm.model": "fake-model",
                                      "llm.endpoints": [server.url], "llm.prompt_mode": "chat",
                                      "captions.min_words": 20, "captions.min_seed_cosine": 0})
        summary = build(recipe, out=str(out))

    captions = load_dataset(str(out), "captions", split="train")
    toy = load_dataset(str(out), TOY, split="train")
    shards = -(-len(captions) // 3)
    assert len(captions) >= 2 and len(toy) == len(captions) - shards
    by_id = dict(zip(captions["id"], captions["caption"], strict=True))
    assert all(by_id[i].upper() == c for i, c in zip(toy["id"], toy["caption"], strict=True))

    rejections = [r for r in pq.read_table(out / "artifacts" / "rejections.parquet").to_pylist() if r["stage"] == TOY]
    assert len(rejections) == shards and {r["reason"] for r in rejections} == {REASON}
    assert {r["id"] for r in rejections} | set(toy["id"]) == set(captions["id"])  # rows in = out + rejections
    assert all(r["input"] == by_id[r["id"]] for r in rejections)

    manifest = json.loads((out / "artifacts" / "build_manifest.json").read_text())
    assert manifest["stages"][TOY]["rows_out"] == len(toy) == summary["stages"][TOY]["rows_out"]
    assert manifest["provenance"][TOY] == {"case": "upper"}

    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert TOY in {c["config_name"] for c in header["configs"]}
    assert "Toy: the captions in upper case." in card and f"{len(toy)} captions shouted" in card
    assert f"| {TOY} | `{REASON}` | {shards} |" in card
