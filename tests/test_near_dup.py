"""Near-duplicate captions: known duplicates found, pointers to the kept row, order-independent, accounted for."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicorn_datasets.analysis.near_dup import (
    candidate_probability,
    mark_parts,
    near_duplicates,
    provenance,
    reject_near_duplicates,
)
from unicorn_datasets.dataset.rejections import write_rejections
from unicorn_datasets.dataset.repo import BuildRepo
from unicorn_datasets.pipeline.loop import rejection_inputs
from unicorn_datasets.recipe import NearDupSection, Recipe, RecipeError
from unicorn_datasets.stages.captions import assemble_captions

BUS = ("A red double-decker bus drives along a wet city street at dusk while pedestrians with umbrellas wait at "
       "the crossing and shop windows glow with warm light behind them on the corner.")
DOG = ("A small brown dog sleeps on a blue couch next to a window with white curtains and a potted plant on the "
       "sill in the afternoon sun while a cat watches from the rug.")
BOAT = ("Three fishing boats are tied to a wooden dock in a calm harbor, their hulls painted green and white, "
        "with nets piled on the planks and gulls circling above the masts.")
# a BUS-like scene (same template words) that is a different caption: must not be flagged
BUS_OTHER = ("A yellow school bus waits outside a brick school on a sunny morning while children with backpacks "
             "line up at the door and teachers in coats stand on the steps beside them.")

CFG = NearDupSection(enabled=True, threshold=0.5)


def _rows() -> tuple[list[str], list[str]]:
    texts = {
        "a-bus": BUS,
        "b-dog": DOG,
        "c-bus-copy": BUS,  # exact duplicate of a-bus
        "d-bus-edit": BUS.replace("wet", "rainy").replace("warm", "soft"),  # near-duplicate of a-bus
        "e-boat": BOAT,
        "f-bus-other": BUS_OTHER,
        "g-dog-edit": DOG.replace("afternoon", "morning"),
    }
    return list(texts), list(texts.values())


def test_known_duplicates_point_at_the_kept_caption() -> None:
    ids, texts = _rows()
    dup = near_duplicates(ids, texts, CFG)
    assert set(dup) == {"c-bus-copy", "d-bus-edit", "g-dog-edit"}
    assert dup["c-bus-copy"] == ("a-bus", 1.0)
    assert dup["d-bus-edit"][0] in {"a-bus"}  # never a rejected row (c-bus-copy)
    assert dup["g-dog-edit"][0] == "b-dog" and CFG.threshold <= dup["g-dog-edit"][1] < 1.0


def test_result_does_not_depend_on_input_order() -> None:
    ids, texts = _rows()
    perm = np.random.default_rng(0).permutation(len(ids))
    assert near_duplicates([ids[i] for i in perm], [texts[i] for i in perm], CFG) == near_duplicates(ids, texts, CFG)


def test_recipe_section_is_checked() -> None:
    cfg = Recipe.from_dict({"near_dup": {"enabled": True, "threshold": 0.6}}).near_dup
    assert cfg.enabled and cfg.threshold == 0.6 and provenance(cfg)["recall_at_threshold"] > 0.9
    assert not Recipe.from_dict({}).near_dup.enabled
    assert candidate_probability(0.95, cfg) > 0.999 and candidate_probability(0.2, cfg) < 0.05
    with pytest.raises(RecipeError, match="at most 1"):
        Recipe.from_dict({"near_dup": {"threshold": 1.5}})
    for bad, msg in (({"method": "embedding"}, "method"), ({"thresold": 1}, "thresold")):
        with pytest.raises(RecipeError, match=msg):
            Recipe.from_dict({"near_dup": bad})


def _part(ids: list[str], texts: list[str | None], reasons: list[str | None]) -> pa.Table:
    n = len(ids)
    return pa.table({"id": ids, "seed": [f"seed {i}" for i in ids], "source": ["t"] * n,
                     "caption": pa.array(texts, pa.string()), "reject_reason": pa.array(reasons, pa.string()),
                     "raw_output": [t or "raw" for t in texts], "attempts": pa.array([1] * n, pa.int32()),
                     "n_tokens": [10] * n, "gen_seed": pa.array([7] * n, pa.uint64())})


def test_build_hook_rejects_and_accounts_for_every_row(tmp_path: Path) -> None:
    """The hook on Stage-1 parts: captions config excludes the duplicates, rejections list them with a pointer,
    rows in = rows out + rejections, and running it again changes nothing (resume)."""
    repo = BuildRepo(tmp_path / "out")
    ids, texts = _rows()
    # shard 0: a-bus b-dog c-bus-copy (+ one row Stage 1 already rejected); shard 1: the rest
    repo.write_part("captions", 0, _part([*ids[:3], "a0-short"], [*texts[:3], None], [None, None, None, "too_short"]),
                    {"rows": 4})
    repo.write_part("captions", 1, _part(ids[3:], texts[3:], [None] * 4), {"rows": 4})
    ctx = SimpleNamespace(repo=repo, world=1, rank=0, is_main=True, run_stats={}, barrier=lambda: None)
    reject_near_duplicates(ctx, "captions", CFG)
    summary = assemble_captions(repo, "m", "sha")
    write_rejections(repo, rejection_inputs())  # what the build loop does after a stage that rejects rows
    assert summary["rows_in"] == 8 and summary["rejected"] == {"too_short": 1, "near_duplicate": 3}
    assert summary["rows_out"] == 4
    kept = pq.read_table(repo.out / "captions").column("id").to_pylist()
    assert sorted(kept) == ["a-bus", "b-dog", "e-boat", "f-bus-other"]
    rej = {r["id"]: r for r in pq.read_table(repo.out / "artifacts" / "rejections.parquet").to_pylist()}
    assert rej["c-bus-copy"]["reason"] == "near_duplicate" and rej["c-bus-copy"]["duplicate_of"] == "a-bus"
    assert rej["g-dog-edit"]["duplicate_of"] == "b-dog" and rej["a0-short"]["duplicate_of"] is None
    meta = json.loads((repo.stage_dir("captions") / "part-00000.json").read_text())
    assert meta == {"rows": 4}
    # a rerun (resume) finds the same duplicates and marks nothing new
    dup = near_duplicates(ids, texts, CFG)
    assert mark_parts(repo, "captions", dup) == 0


def test_build_with_balanced_seeds_and_near_dup(tiny_llm: Path, tmp_path: Path) -> None:
    """The hooks end to end: balanced selection + near-dup pass in a real build; card and report show both."""
    from conftest import TINY_FLAGS, run_build

    out = tmp_path / "b"
    r = run_build(["--recipe", "demo", "--out", str(out), "--limit", "8", "--llm", str(tiny_llm),
                   "--stages", "captions", "--balance", "--set", "balance.encoder=hashed", "--set", "balance.k=4",
                   "--set", "near_dup.enabled=true", *TINY_FLAGS])
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "artifacts" / "build_manifest.json").read_text())
    captions = manifest["stages"]["captions"]
    rejections = pq.read_table(out / "artifacts" / "rejections.parquet")
    assert captions["rows_in"] == 8 == captions["rows_out"] + rejections.num_rows
    assert "duplicate_of" in rejections.column_names
    assert manifest["provenance"]["captions"]["near_dup"]["threshold"] == 0.5
    report = json.loads((out / "artifacts" / "report.json").read_text())
    sb = report["seed_balance"]
    assert sb["k"] == 4 and sum(sb["seeds_balanced"]["cluster_sizes"]) == 8 == sum(sb["seeds_uniform"]["cluster_sizes"])
    assert sum(sb["captions_balanced"]["cluster_sizes"]) == captions["rows_out"]
    assert "Concept-balanced seeds" in (out / "README.md").read_text()


def test_two_processes_reject_the_same_rows_as_one(tmp_path: Path) -> None:
    """Signature shards split over 2 ranks (rank 1 runs first, then rank 0 finishes): same rejections as 1 rank."""
    ids, texts = _rows()
    results = []
    for world in (1, 2):
        repo = BuildRepo(tmp_path / f"w{world}")
        for shard, sl in enumerate((slice(0, 2), slice(2, 4), slice(4, 7))):
            repo.write_part("captions", shard, _part(ids[sl], texts[sl], [None] * len(ids[sl])), {"rows": 2})
        for rank in reversed(range(world)):
            ctx = SimpleNamespace(repo=repo, world=world, rank=rank, is_main=rank == 0, run_stats={},
                                  barrier=lambda: None)
            reject_near_duplicates(ctx, "captions", CFG)
        metas = [json.loads(p.read_text()) for p in sorted(repo.stage_dir("near_dup").glob("part-*.json"))]
        assert sorted(m["rank"] for m in metas) == ([0, 0, 0] if world == 1 else [0, 0, 1])
        results.append(sorted((r["id"], r["duplicate_of"]) for t in repo.read_parts("captions")
                              for r in t.to_pylist() if r["reject_reason"]))
    assert results[0] == results[1] == [("c-bus-copy", "a-bus"), ("d-bus-edit", "a-bus"), ("g-dog-edit", "b-dog")]
