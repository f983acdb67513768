"""Caption seeds: the user's own caption files/datasets, label x template domain seeds, shipped sets.

Every seed gets a stable id (its source plus a hash of its normalised text), so a row can be
traced and regenerated whatever the order or number of processes. Bad input raises SeedError
naming the file, line or column, before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unicorn_datasets.text.hygiene import TextChanges, TextError, clean, dedup_key, read_lines
from unicorn_datasets.text.reserved import escape_seed

SHIPPED = Path(__file__).parent.parent / "data" / "seeds"
TEXT_COLUMNS = ("caption", "text", "seed", "sentence")


class SeedError(ValueError):
    """A seed source the build cannot use; the message names the file, line or column."""


@dataclass(frozen=True)
class Seed:
    id: str
    seed: str
    source: str
    label: str = ""  # domain seeds: the label placed in the template (balanced selection draws across labels)
    domain: str | None = None  # domain seeds: the domain of domains.json the label belongs to


@dataclass
class SeedStats(TextChanges):
    """What happened to a source's texts: the hygiene changes (TextChanges) and the filters."""

    read: int = 0
    duplicates: int = 0  # detected after cleaning: case, NFC, invisible characters and spacing never hide one
    too_short: int = 0
    too_long: int = 0
    empty: int = 0
    reserved_escaped: int = 0  # seeds with a reserved token (`<image>`, `<|im_end|>`, ...) written as plain text


def normalize(text: str, stats: SeedStats | None = None) -> str:
    """A seed as the LLM sees it: clean text (see text.clean) with reserved tokens repaired."""
    stats = stats if stats is not None else SeedStats()
    text, escaped = escape_seed(clean(text, stats))
    stats.reserved_escaped += escaped
    return text


def seed_id(source: str, text: str) -> str:
    return f"{source}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def _builtin(path: str) -> Path:
    return SHIPPED / {"builtin:open_domain": "open_domain.txt", "builtin:domains": "domains.json"}.get(
        path, path.removeprefix("builtin:")
    )


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


def _pick_column(available: list[str], column: str | None, where: str) -> str:
    if column is not None:
        if column not in available:
            raise SeedError(f"{where}: no column '{column}' (columns: {', '.join(available) or 'none'})")
        return column
    for c in TEXT_COLUMNS:
        if c in available:
            return c
    raise SeedError(f"{where}: say which column holds the seeds with --seed-column (columns: {', '.join(available)})")


def _texts_from_file(p: Path, column: str | None, stats: SeedStats) -> list[str]:
    suffix = p.suffix.lower()
    if suffix in (".txt", ""):
        return _decode_lines(p, stats)
    if suffix in (".jsonl", ".json"):
        texts = []
        lines = _decode_lines(p, stats)
        col = None  # chosen on the first object; every later line must have it too
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SeedError(f"{p}:{lineno}:{e.colno}: invalid JSON ({e.msg})") from e
            if not isinstance(obj, dict):
                raise SeedError(f"{p}:{lineno}: expected a JSON object per line")
            col = col or _pick_column(list(obj), column, f"{p}:{lineno}")
            if col not in obj:
                raise SeedError(f"{p}:{lineno}: no column '{col}' (columns: {', '.join(obj) or 'none'})")
            texts.append(str(obj[col]) if obj[col] is not None else "")
        return texts
    if suffix in (".csv", ".tsv"):
        return _texts_from_csv(p, column, "\t" if suffix == ".tsv" else ",", stats)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:
            raise SeedError(f"{p}: not a readable Parquet file ({e})") from e
        col = _pick_column(table.column_names, column, str(p))
        return [str(v) if v is not None else "" for v in table.column(col).to_pylist()]
    raise SeedError(f"{p}: unsupported seed file type '{suffix}' (use .txt, .jsonl, .csv, .tsv, .parquet or a dataset)")


def _texts_from_csv(p: Path, column: str | None, delimiter: str, stats: SeedStats) -> list[str]:
    reader = csv.DictReader(io.StringIO("\n".join(_decode_lines(p, stats))), delimiter=delimiter)
    try:
        col = _pick_column(list(reader.fieldnames or []), column, str(p))
        texts = []
        for row in reader:
            if row[col] is None:  # a short row: the column is missing, not empty
                raise SeedError(f"{p}:{reader.line_num}: no value for column '{col}' (row has {len(row) - 1} field(s))")
            texts.append(row[col])
        return texts
    except csv.Error as e:
        raise SeedError(f"{p}:{reader.line_num}: not valid {'TSV' if delimiter == chr(9) else 'CSV'} ({e})") from None


def _texts_from_dataset(name: str, column: str | None) -> list[str]:
    import datasets

    try:
        if Path(name).is_dir() and (Path(name) / "dataset_info.json").exists():
            ds: Any = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name)
    except Exception as e:
        raise SeedError(f"{name}: cannot load as a dataset ({type(e).__name__}: {e})") from e
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    col = _pick_column(ds.column_names, column, name)
    return [str(v) if v is not None else "" for v in ds[col]]


def load_caption_seeds(
    path: str,
    *,
    column: str | None = None,
    source: str | None = None,
    min_words: int = 2,
    max_words: int = 120,
    stats: SeedStats | None = None,
) -> list[Seed]:
    """Open-domain caption seeds from a file, a dataset folder, or a Hub id (when online)."""
    stats = stats if stats is not None else SeedStats()
    p = _builtin(path) if path.startswith("builtin:") else Path(path).expanduser()
    if p.is_file():
        texts = _texts_from_file(p, column, stats)
        source = source or p.stem
    elif p.is_dir() or ("/" in path and not path.startswith((".", "/", "~"))):
        texts = _texts_from_dataset(path, column)
        source = source or Path(path).name
    else:
        raise SeedError(f"seed file not found: {path}")
    seeds = _filter([normalize(t, stats) for t in texts], source, min_words, max_words, stats)
    if not seeds:
        raise SeedError(f"{path}: no usable seeds ({stats.read} read: {stats.as_dict()})")
    return seeds


def _filter(texts: list[str], source: str, min_words: int, max_words: int, stats: SeedStats) -> list[Seed]:
    out: list[Seed] = []
    seen: set[str] = set()
    for text in texts:
        stats.read += 1
        n = len(text.split())
        if n == 0:
            stats.empty += 1
        elif n < min_words:
            stats.too_short += 1
        elif n > max_words:
            stats.too_long += 1
        elif dedup_key(text) in seen:
            stats.duplicates += 1
        else:
            seen.add(dedup_key(text))
            out.append(Seed(seed_id(source, text), text, source))
    return out


def _stable_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


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
    p = _resolve(path)
    try:
        spec = json.loads("\n".join(_decode_lines(p, stats)))
    except json.JSONDecodeError as e:
        raise SeedError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from e
    domains = spec.get("domains") if isinstance(spec, dict) else None
    if not isinstance(domains, dict) or not domains:
        raise SeedError(f'{p}: expected {{"domains": {{NAME: {{"templates": [...], "labels": [...]}}}}}}')
    texts_by_source: list[tuple[str, str, str, str]] = []
    for name, d in domains.items():
        templates, labels = d.get("templates") or [], d.get("labels") or []
        if not templates or not labels:
            raise SeedError(f"{p}: domain '{name}' needs non-empty 'templates' and 'labels'")
        for t in templates:
            if t.count("{label}") != 1:
                raise SeedError(f"{p}: domain '{name}': template must contain {{label}} once: {t!r}")
        k = min(templates_per_label, len(templates))
        for label in labels:
            rng = np.random.default_rng(_stable_int(seed, name, label))
            for j in rng.choice(len(templates), size=k, replace=False):
                text = normalize(templates[int(j)].replace("{label}", str(label)), stats)
                texts_by_source.append((f"domain_{name}", text, str(label), name))
    out: list[Seed] = []
    seen: set[str] = set()
    for source, text, label, domain in texts_by_source:
        stats.read += 1
        if dedup_key(text) in seen:
            stats.duplicates += 1
            continue
        seen.add(dedup_key(text))
        out.append(Seed(seed_id(source, text), text, source, label, domain))
    if not out:
        raise SeedError(f"{p}: no domain seeds")
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
