"""Concept-balanced seed selection (Synth²): when a limit keeps fewer seeds than are available, cover
semantic clusters evenly instead of drawing uniformly at random.

All available seeds (deduplicated, ordered by id) are embedded (the recipe's encoder, or hashed TF-IDF)
and clustered once with k-means (clustering.py). The limit is split between caption seeds and domain
(label x template) seeds in proportion to what is available, which is what a uniform draw gives in
expectation, then:
- caption seeds are drawn round-robin across clusters: every cluster gives its 1st seed, then its 2nd...
- domain seeds are drawn round-robin by template, then label, then domain: every label gets one template
  before any label gets a second, and the domains take turns.
Ties inside a round (which cluster/label gets the last places) and the order inside a cluster follow a hash
of (build seed, seed id), so the selection depends on the build seed only, never on input order.

`artifacts/seed_clusters.parquet` records every available seed's cluster and whether the balanced and the
uniform draw selected it: the report turns it into the cluster-size histograms (clustering.balance_report).
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from unicorn_datasets.analysis.clustering import default_k, hashed_tfidf, kmeans
from unicorn_datasets.recipe import BalanceSection, Recipe
from unicorn_datasets.seeds.sources import Seed, _stable_int, merge_seeds, uniform_draw

CLUSTERS_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("cluster", pa.int32()), ("balanced", pa.bool_()),
     ("uniform", pa.bool_())]
)


def balance_section(recipe: Recipe) -> BalanceSection:
    """The recipe's `balance` section with its encoder resolved (unset: `transfer.encoder`)."""
    b = recipe.balance
    return dataclasses.replace(b, encoder=b.encoder or recipe.transfer.encoder)


@dataclass
class Selection:
    seeds: list[Seed]
    clusters: pa.Table | None  # CLUSTERS_SCHEMA over all available seeds; None when nothing was clustered
    summary: dict[str, Any]
    encoder: Any = None  # the model that embedded the seeds (None: none loaded), for Stage 3 to reuse


def seed_encoder(cfg: BalanceSection, *, trust_remote_code: bool = False) -> Any:
    """The model that embeds the seeds, or None for hashed TF-IDF."""
    if cfg.encoder == "hashed":
        return None
    from unicorn_datasets.encoders import load_encoder

    return load_encoder(cfg.encoder, device=_device(), trust_remote_code=trust_remote_code)


def embed_seeds(texts: list[str], cfg: BalanceSection, encoder: Any) -> np.ndarray:
    if encoder is None:
        return hashed_tfidf(texts)
    return encoder.encode_text(texts, batch_size=cfg.batch_size)


def _device() -> str:
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def _round_robin(seeds: list[Seed], buckets: list[Any], build_seed: int) -> list[int]:
    """Positions of `seeds` in round-robin order across buckets (rank inside its bucket first)."""
    tie = [_stable_int(build_seed, "balance", s.id) for s in seeds]
    members: dict[Any, list[int]] = defaultdict(list)
    for i in sorted(range(len(seeds)), key=lambda i: tie[i]):
        members[buckets[i]].append(i)
    rank = {i: r for m in members.values() for r, i in enumerate(m)}
    return sorted(range(len(seeds)), key=lambda i: (rank[i], tie[i]))


def _domain_order(seeds: list[Seed], build_seed: int) -> list[int]:
    """Round-robin by template, then label, then domain: one template per label before any gets two."""
    tie = [_stable_int(build_seed, "balance", s.id) for s in seeds]
    by_label: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i in sorted(range(len(seeds)), key=lambda i: tie[i]):
        by_label[(seeds[i].source, seeds[i].label)].append(i)
    labels_of: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in sorted(by_label, key=lambda key: _stable_int(build_seed, "balance-label", *key)):
        labels_of[key[0]].append(key)
    key_of = {}
    for domain, labels in labels_of.items():
        for label_rank, key in enumerate(labels):
            for template_rank, i in enumerate(by_label[key]):
                key_of[i] = (template_rank, label_rank, _stable_int(build_seed, "balance-domain", domain))
    return sorted(range(len(seeds)), key=lambda i: key_of[i])


def _quotas(n_caption: int, n_domain: int, limit: int) -> tuple[int, int]:
    """Split `limit` in proportion to what is available (rounded), never above what a kind has."""
    total = n_caption + n_domain
    domain = min(n_domain, round(limit * n_domain / total)) if total else 0
    caption = min(n_caption, limit - domain)
    return caption, min(n_domain, limit - caption)


def select(groups: list[list[Seed]], *, limit: int | None, seed: int, cfg: BalanceSection,
           trust_remote_code: bool = False, split: tuple[int, int] | None = None) -> Selection:
    """The seeds a build uses: a uniform draw, or (cfg.enabled and a binding limit) a balanced one.

    `split`: (caption seeds, domain seeds) when the recipe's shares fix it (mix.py); else in proportion."""
    merged = merge_seeds(groups)
    uniform = uniform_draw(merged, limit=limit, seed=seed)
    if not cfg.enabled:
        return Selection(uniform, None, {"enabled": False})
    if limit is None or limit >= len(merged):
        return Selection(uniform, None, {"enabled": True, "applied": False,
                                         "why": f"the limit keeps all {len(merged)} available seeds"})
    encoder = seed_encoder(cfg, trust_remote_code=trust_remote_code)
    x = embed_seeds([s.seed for s in merged], cfg, encoder)
    k = min(cfg.k or default_k(len(merged)), len(merged))
    labels = kmeans(x, k, seed=seed).labels
    captions = [i for i, s in enumerate(merged) if not s.label]
    domains = [i for i, s in enumerate(merged) if s.label]
    n_cap, n_dom = split or _quotas(len(captions), len(domains), limit)
    picked = [captions[j] for j in _round_robin([merged[i] for i in captions],
                                                 [int(labels[i]) for i in captions], seed)[:n_cap]]
    picked += [domains[j] for j in _domain_order([merged[i] for i in domains], seed)[:n_dom]]
    chosen = [merged[i] for i in picked]
    balanced_ids = {s.id for s in chosen}
    uniform_ids = {s.id for s in uniform}
    table = pa.Table.from_arrays(
        [pa.array([s.id for s in merged]), pa.array([s.source for s in merged]), pa.array(labels, pa.int32()),
         pa.array([s.id in balanced_ids for s in merged]), pa.array([s.id in uniform_ids for s in merged])],
        schema=CLUSTERS_SCHEMA)
    summary = {"enabled": True, "applied": True, "encoder": cfg.encoder, "k": k, "available": len(merged),
               "selected": len(chosen), "caption_seeds": n_cap, "domain_seeds": n_dom}
    return Selection(chosen, table, summary, encoder)
