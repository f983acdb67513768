"""The seed plan: every source of the recipe loaded, the mix (each source's `share` of `limit`) applied, the
seeds selected. One code path for `unicorn build` and `unicorn seeds` (which prints the plan only).

A source with `share` gets round(share x limit) seeds, drawn uniformly from it; the sources without a
share split what is left, drawn uniformly from their merged pool (so in proportion to what they hold).
A share a source cannot meet, or a limit above what all sources hold, is never truncated in silence:
`SeedPlan.notes` says it with the numbers (the build logs them, the card shows them). Without any
share the selection is exactly the former uniform draw over all sources (or the balanced one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unicorn_datasets.recipe import BalanceSection, Recipe, SeedSource
from unicorn_datasets.seeds.balance import Selection, balance_section, select
from unicorn_datasets.seeds.sources import (
    Seed,
    SeedStats,
    _stable_int,
    domain_summary,
    load_domain_seeds,
    merge_seeds,
    read_caption_seeds,
    uniform_draw,
)
from unicorn_datasets.text.hygiene import dedup_key

BUILTIN_LICENSES = {"builtin:open_domain": "Apache-2.0 (written for this project)"}


@dataclass
class SourcePlan:
    spec: SeedSource
    seeds: list[Seed] = field(repr=False, default_factory=list)  # after dedup against earlier sources
    stats: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)  # sha256, kind, split/revision; domains: counts, origins
    wanted: int | None = None  # round(share x limit)
    selected: int = 0

    @property
    def available(self) -> int:
        return len(self.seeds)

    def to_json(self) -> dict[str, Any]:
        """The plan's shape (`unicorn seeds --json`): kind, path, available, selected, share (+ domain counts)."""
        s = self.spec
        out: dict[str, Any] = {"kind": s.kind, "path": s.path, "available": self.available,
                               "selected": self.selected, "share": s.share}
        if s.kind == "domains":
            out.update({k: self.origin.get(k) for k in ("domains", "labels", "templates",
                                                        "min_templates_per_domain")})
        return out

    def provenance(self) -> dict[str, Any]:
        """For the manifest and the card: the plan plus the rows' `source` value, content hash and licence."""
        origin = {k: v for k, v in self.origin.items() if k not in ("labels_per_domain",)}
        return {**self.to_json(), "source": self.seeds[0].source if self.seeds and self.spec.kind == "captions"
                else None, "wanted": self.wanted, "license": license_of(self.spec, origin), "origin": origin}


@dataclass
class SeedPlan:
    limit: int | None
    sources: list[SourcePlan]
    selection: Selection
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"limit": self.limit, "sources": [s.to_json() for s in self.sources]}

    def mix(self) -> dict[str, Any]:
        """For the manifest and the card: per source and per domain, what was selected, and the notes."""
        domains: dict[str, int] = {}
        for s in self.selection.seeds:
            if s.domain:
                domains[s.domain] = domains.get(s.domain, 0) + 1
        return {"limit": self.limit, "sources": [s.provenance() for s in self.sources], "notes": self.notes,
                "selected_by_domain": dict(sorted(domains.items()))}


def license_of(spec: SeedSource, origin: dict[str, Any]) -> str | None:
    if spec.license:
        return spec.license
    if spec.path in BUILTIN_LICENSES:
        return BUILTIN_LICENSES[spec.path]
    lists = origin.get("origins") or []
    return "; ".join(sorted({str(o.get("license")) for o in lists if o.get("license")})) or None


def _load(spec: SeedSource, build_seed: int) -> SourcePlan:
    st = SeedStats()
    if spec.kind == "domains":
        seeds = load_domain_seeds(spec.path, templates_per_label=spec.templates_per_label, seed=build_seed, stats=st)
        origin = domain_summary(spec.path)
    else:
        seeds, origin = read_caption_seeds(
            spec.path, column=spec.column, group_column=spec.group_column, split=spec.split, config=spec.config,
            revision=spec.revision, source=spec.source, min_words=spec.min_words, max_words=spec.max_words,
            seed=build_seed, stats=st)
    return SourcePlan(spec, seeds, {**st.as_dict(), "kept": len(seeds)}, origin)


def _dedup_across(plans: list[SourcePlan]) -> None:
    """A text two sources share counts for the first one only, so `available` is what a source adds."""
    seen: set[str] = set()
    for p in plans:
        kept = []
        for s in p.seeds:
            key = dedup_key(s.seed)
            if key not in seen:
                seen.add(key)
                kept.append(s)
        p.seeds = kept


def _fmt(n: int | float) -> str:
    return f"{n:,}"


def _quotas(plans: list[SourcePlan], limit: int, notes: list[str]) -> int:
    """Set each share source's `wanted`; return how many seeds the sources without a share should give."""
    taken = 0
    short = 0
    for p in plans:
        if p.spec.share is None:
            continue
        p.wanted = round(p.spec.share * limit)
        take = min(p.wanted, p.available)
        if take < p.wanted:
            short += p.wanted - take
            notes.append(f"seed source {p.spec.path}: share {p.spec.share:g} of limit {_fmt(limit)} asks "
                         f"{_fmt(p.wanted)} seeds but it holds {_fmt(p.available)} ({_fmt(p.wanted - take)} short, "
                         f"{take / limit:.2%} of the limit instead of {p.spec.share:.2%})")
        taken += take
    rest = limit - taken
    pool = sum(p.available for p in plans if p.spec.share is None)
    if short and pool > rest - short:
        notes.append(f"the {_fmt(short)} seeds the shares miss are drawn from the sources without a share")
    return rest


def plan_seeds(recipe: Recipe, trust_remote_code: bool = False) -> SeedPlan:
    """Load every source, apply the shares and select the seeds (uniform, or balanced when enabled)."""
    if not recipe.seeds:
        raise ValueError("the recipe names no seed sources")
    plans = [_load(spec, recipe.seed) for spec in recipe.seeds]
    _dedup_across(plans)
    limit, notes = recipe.limit, []
    total = sum(p.available for p in plans)
    cfg = balance_section(recipe)
    if limit is not None and limit > total:
        notes.append(f"limit {_fmt(limit)} is above what all seed sources hold together ({_fmt(total)}): "
                     f"the build makes {_fmt(total)} rows at most")
    has_shares = any(p.spec.share is not None for p in plans)
    if limit is None and has_shares:
        notes.append("no limit: every seed is used and the shares do not apply")
    if limit is None or not has_shares:
        selection = select([p.seeds for p in plans], limit=limit, seed=recipe.seed, cfg=cfg,
                           trust_remote_code=trust_remote_code)
    else:
        selection = _shared_selection(plans, limit, recipe.seed, cfg, notes, trust_remote_code)
    if limit is not None and total >= limit > len(selection.seeds):
        notes.append(f"{_fmt(len(selection.seeds))} seeds selected for limit {_fmt(limit)}: the sources without a "
                     "share hold fewer seeds than the shares leave to them (the shares are kept as set)")
    chosen = {s.id for s in selection.seeds}
    for p in plans:
        p.selected = sum(s.id in chosen for s in p.seeds)
    return SeedPlan(limit, plans, selection, notes)


def _shared_selection(plans: list[SourcePlan], limit: int, seed: int, cfg: BalanceSection, notes: list[str],
                      trust_remote_code: bool) -> Selection:
    rest = _quotas(plans, limit, notes)
    chosen: list[Seed] = []
    for p in plans:
        if p.wanted is not None:
            own = sorted(p.seeds, key=lambda s: s.id)
            chosen += uniform_draw(own, limit=min(p.wanted, p.available), seed=_stable_int(seed, "share", p.spec.path))
    pool = merge_seeds([p.seeds for p in plans if p.spec.share is None])
    chosen += uniform_draw(pool, limit=max(0, rest), seed=seed)
    if cfg.enabled:  # balanced within each kind, with the kind totals the shares gave
        n_dom = sum(1 for s in chosen if s.label)
        return select([p.seeds for p in plans], limit=len(chosen), seed=seed, cfg=cfg,
                      trust_remote_code=trust_remote_code, split=(len(chosen) - n_dom, n_dom))
    return Selection(uniform_draw(sorted(chosen, key=lambda s: s.id), limit=None, seed=seed), None,
                     {"enabled": False})
