"""Caption seeds: the user's own caption files/datasets, label x template domain seeds, shipped sets.

Every seed gets a stable id (its source plus a hash of its normalised text), so a row can be
traced and regenerated whatever the order or number of processes. Bad input raises SeedError
naming the file, line or column, before anything is written. Reading caption sources (files,
dataset folders, Hub ids, list columns) is readers.py's job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unicorn_datasets.seeds.readers import CaptionRows, SeedError, file_sha256, read_dataset, read_file
from unicorn_datasets.text.hygiene import TextChanges, TextError, clean, dedup_key, read_lines
from unicorn_datasets.text.reserved import escape_seed

SHIPPED = Path(__file__).parent.parent / "data" / "seeds"
__all__ = ["Seed", "SeedError", "SeedStats", "load_caption_seeds", "load_domain_seeds", "read_caption_seeds"]


@dataclass(frozen=True)
class Seed:
    id: str
    seed: str
    source: str
    label: str | None = None  # domain seeds: the label placed in the template; None for caption seeds
    domain: str | None = None  # domain seeds: the label's domain (food, plants, ...); None for caption seeds


@dataclass
class SeedStats(TextChanges):
    """What happened to a source's texts: the hygiene changes (TextChanges) and the filters."""

    read: int = 0
    duplicates: int = 0  # detected after cleaning: case, NFC, invisible characters and spacing never hide one
    too_short: int = 0
    too_long: int = 0
    empty: int = 0
    reserved_escaped: int = 0  # seeds with a reserved token (`<image>`, `<|im_end|>`, ...) written as plain text
    same_group: int = 0  # other captions of a group (image) that already gave its one caption


def normalize(text: str, stats: SeedStats | None = None) -> str:
    """A seed as the LLM sees it: clean text (see text.clean) with reserved tokens repaired."""
    stats = stats if stats is not None else SeedStats()
    text, escaped = escape_seed(clean(text, stats))
    stats.reserved_escaped += escaped
    return text


def seed_id(source: str, text: str) -> str:
    return f"{source}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def _builtin(path: str) -> Path:
    return SHIPPED / {"builtin:open_domain": "open_domain.txt", "builtin:domains": "domains.json",
                      "builtin:domains_demo": "domains_demo.json"}.get(path, path.removeprefix("builtin:"))


def _resolve(path: str) -> Path:
    p = _builtin(path) if path.startswith("builtin:") else Path(path).expanduser()
    if not p.exists():
        raise SeedError(f"seed file not found: {path}")
    return p


def _decode_lines(p: Path, stats: SeedStats) -> list[str]:
    """A text file's lines; a NUL, non-UTF-8 byte or absurd length is named by line and column."""
    try:
        return read_lines(p, stats)
    except TextError as e:
        raise SeedError(str(e)) from None


def read_caption_seeds(
    path: str,
    *,
    column: str | None = None,
    group_column: str | None = None,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    source: str | None = None,
    min_words: int = 2,
    max_words: int = 120,
    seed: int = 0,
    stats: SeedStats | None = None,
) -> tuple[list[Seed], dict[str, Any]]:
    """Open-domain caption seeds and where they came from (kind, sha256 of a file, split/revision of a dataset).

    `path`: a file, a dataset folder, or a Hub id (streamed). With `group_column`, one caption per group
    (the paper's one caption per image) is kept, chosen by a hash of (`seed`, group, caption)."""
    stats = stats if stats is not None else SeedStats()
    p = _builtin(path) if path.startswith("builtin:") else Path(path).expanduser()
    rows: CaptionRows
    if p.is_file():
        rows = read_file(p, column, group_column, stats)
        source = source or p.stem
    elif p.is_dir() or ("/" in path and not path.startswith((".", "/", "~"))):
        rows = read_dataset(path, column, group_column, split=split, config=config, revision=revision)
        source = source or Path(path).name
    else:
        raise SeedError(f"seed file not found: {path}")
    seeds = _filter([normalize(t, stats) for t in rows.texts], rows.groups, source, min_words, max_words, seed, stats)
    if not seeds:
        raise SeedError(f"{path}: no usable seeds ({stats.read} read: {stats.as_dict()})")
    return seeds, rows.origin


def load_caption_seeds(path: str, *, column: str | None = None, source: str | None = None, min_words: int = 2,
                       max_words: int = 120, stats: SeedStats | None = None, **kwargs: Any) -> list[Seed]:
    """Open-domain caption seeds (read_caption_seeds without the origin)."""
    return read_caption_seeds(path, column=column, source=source, min_words=min_words, max_words=max_words,
                              stats=stats, **kwargs)[0]


def _filter(texts: list[str], groups: list[str] | None, source: str, min_words: int, max_words: int, seed: int,
            stats: SeedStats) -> list[Seed]:
    """Length filters, then (groups) one caption per group, then exact duplicates after cleaning."""
    usable: list[int] = []
    for i, text in enumerate(texts):
        stats.read += 1
        n = len(text.split())
        if n == 0:
            stats.empty += 1
        elif n < min_words:
            stats.too_short += 1
        elif n > max_words:
            stats.too_long += 1
        else:
            usable.append(i)
    if groups is not None:  # the group's caption: smallest hash of (seed, group, text), whatever the file order
        best: dict[str, int] = {}
        for i in usable:
            g = groups[i]
            if g not in best or _stable_int(seed, "group", g, texts[i]) < _stable_int(seed, "group", g, texts[best[g]]):
                best[g] = i
        stats.same_group += len(usable) - len(best)
        usable = sorted(best.values())
    out: list[Seed] = []
    seen: set[str] = set()
    for i in usable:
        key = dedup_key(texts[i])
        if key in seen:
            stats.duplicates += 1
        else:
            seen.add(key)
            out.append(Seed(seed_id(source, texts[i]), texts[i], source))
    return out


def _stable_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


def read_domain_spec(path: str = "builtin:domains", stats: SeedStats | None = None) -> dict[str, Any]:
    """A domains file: {"domains": {NAME: {"templates": [...], "labels": [...]}}, "sources": [...]} checked."""
    stats = stats if stats is not None else SeedStats()
    p = _resolve(path)
    try:
        spec = json.loads("\n".join(_decode_lines(p, stats)))
    except json.JSONDecodeError as e:
        raise SeedError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from e
    domains = spec.get("domains") if isinstance(spec, dict) else None
    if not isinstance(domains, dict) or not domains:
        raise SeedError(f'{p}: expected {{"domains": {{NAME: {{"templates": [...], "labels": [...]}}}}}}')
    for name, d in domains.items():
        templates, labels = d.get("templates") or [], d.get("labels") or []
        if not templates or not labels:
            raise SeedError(f"{p}: domain '{name}' needs non-empty 'templates' and 'labels'")
        for t in templates:
            if t.count("{label}") != 1:
                raise SeedError(f"{p}: domain '{name}': template must contain {{label}} once: {t!r}")
    return spec


def domain_summary(path: str = "builtin:domains") -> dict[str, Any]:
    """What a domains file holds: domains, labels, templates (fewest per domain), its lists' origin and licence."""
    spec = read_domain_spec(path)
    domains = spec["domains"]
    return {"domains": len(domains), "labels": sum(len(d["labels"]) for d in domains.values()),
            "templates": sum(len(d["templates"]) for d in domains.values()),
            "min_templates_per_domain": min(len(d["templates"]) for d in domains.values()),
            "labels_per_domain": {n: len(d["labels"]) for n, d in domains.items()},
            "sha256": file_sha256(_resolve(path)), "origins": spec.get("sources") or []}


def load_domain_seeds(
    path: str = "builtin:domains",
    *,
    templates_per_label: int = 10,
    seed: int = 0,
    stats: SeedStats | None = None,
) -> list[Seed]:
    """Domain-knowledge seeds: each label placed into `templates_per_label` templates of its domain,
    drawn at random without replacement from a generator seeded by (seed, domain, label)."""
    stats = stats if stats is not None else SeedStats()
    domains = read_domain_spec(path, stats)["domains"]
    texts_by_source: list[tuple[str, str, str]] = []
    for name, d in domains.items():
        templates, labels = d["templates"], d["labels"]
        k = min(templates_per_label, len(templates))
        for label in labels:
            rng = np.random.default_rng(_stable_int(seed, name, label))
            for j in rng.choice(len(templates), size=k, replace=False):
                text = normalize(templates[int(j)].replace("{label}", str(label)), stats)
                texts_by_source.append((name, text, str(label)))
    out: list[Seed] = []
    seen: set[str] = set()
    for domain, text, label in texts_by_source:
        stats.read += 1
        if dedup_key(text) in seen:
            stats.duplicates += 1
            continue
        seen.add(dedup_key(text))
        source = f"domain_{domain}"
        out.append(Seed(seed_id(source, text), text, source, label=label, domain=domain))
    if not out:
        raise SeedError(f"{path}: no domain seeds")
    return out


def merge_seeds(groups: list[list[Seed]]) -> list[Seed]:
    """Dedup across sources (first wins), ordered by id: input order must not change which seeds a limit keeps."""
    seen: set[str] = set()
    merged: list[Seed] = []
    for group in groups:
        for s in group:
            if dedup_key(s.seed) not in seen:
                seen.add(dedup_key(s.seed))
                merged.append(s)
    merged.sort(key=lambda s: s.id)
    return merged


def uniform_draw(merged: list[Seed], *, limit: int | None, seed: int) -> list[Seed]:
    """`limit` seeds drawn uniformly at random (deterministic from `seed`) from id-ordered seeds."""
    order = np.random.default_rng(seed).permutation(len(merged))
    return [merged[int(i)] for i in order[: limit if limit is not None else len(merged)]]


def merge_and_limit(groups: list[list[Seed]], *, limit: int | None, seed: int) -> list[Seed]:
    """Dedup across sources (first wins), shuffle deterministically, keep `limit`."""
    return uniform_draw(merge_seeds(groups), limit=limit, seed=seed)
