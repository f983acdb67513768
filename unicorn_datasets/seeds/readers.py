"""Caption seed sources as datasets: a file (txt/jsonl/csv/tsv/parquet), a dataset folder, or a Hub id.

Every reader yields only the columns it needs: the text column and, when asked, the group column
(`image_id` for "one caption per image"). A list-valued text column (COCO-style `sentences`) gives one
caption per element. Hub ids are read with `datasets` streaming, so a caption set hosted beside its
images never downloads the images. Bad input raises SeedError naming the file, line or column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unicorn_datasets.dataset.sources import is_saved_dataset, open_dataset
from unicorn_datasets.text.hygiene import TextChanges, TextError, read_lines

TEXT_COLUMNS = ("caption", "text", "seed", "sentence", "sentences", "captions")
HUB_PROBE_TIMEOUT = 10.0  # seconds: a Hub that does not answer is reported, not waited on


class SeedError(ValueError):
    """A seed source the build cannot use; the message names the file, line or column."""


@dataclass
class CaptionRows:
    """What a caption source holds: texts, their group (None without a group column) and where they came from."""

    texts: list[str] = field(default_factory=list)
    groups: list[str] | None = None
    origin: dict[str, Any] = field(default_factory=dict)  # kind, sha256 (files), split/config/revision (datasets)


def file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pick_column(available: list[str], column: str | None, where: str, flag: str = "--seed-column") -> str:
    """`column` if the source has it, else the first usual text column; the error lists what there is."""
    if column is not None:
        if column not in available:
            raise SeedError(f"{where}: no column '{column}' ({flag}; columns: {', '.join(available) or 'none'})")
        return column
    for c in TEXT_COLUMNS:
        if c in available:
            return c
    raise SeedError(f"{where}: say which column holds the seeds with --seed-column (columns: {', '.join(available)})")


def _texts(value: Any) -> list[str]:
    """One cell -> its captions: a list gives one per element (never a stringified list)."""
    if value is None:
        return [""]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, dict):  # COCO-style [{"raw": ...}] elements
        for key in ("raw", "text", "caption", "sentence"):
            if key in value:
                return _texts(value[key])
        return [""]
    return [str(value)]


def _collect(rows: Iterable[dict[str, Any]], text_col: str,
             group_col: str | None) -> tuple[list[str], list[str] | None]:
    texts: list[str] = []
    groups: list[str] | None = [] if group_col else None
    for row in rows:
        cell = _texts(row.get(text_col))
        texts += cell
        if groups is not None:
            groups += [str(row.get(group_col))] * len(cell)
    return texts, groups


def _decode_lines(p: Path, stats: TextChanges) -> list[str]:
    """A text file's lines; a NUL, non-UTF-8 byte or absurd length is named by line and column."""
    try:
        return read_lines(p, stats)
    except TextError as e:
        raise SeedError(str(e)) from None


def _jsonl_rows(p: Path, stats: TextChanges) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(_decode_lines(p, stats), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SeedError(f"{p}:{lineno}:{e.colno}: invalid JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise SeedError(f"{p}:{lineno}: expected a JSON object per line")
        yield lineno, obj


def _from_jsonl(p: Path, column: str | None, group_column: str | None, stats: TextChanges) -> CaptionRows:
    out = CaptionRows(groups=[] if group_column else None)
    cols: tuple[str, str | None] | None = None  # chosen on the first object; every later line must have them
    for lineno, obj in _jsonl_rows(p, stats):
        if cols is None:
            cols = (pick_column(list(obj), column, f"{p}:{lineno}"),
                    group_column and pick_column(list(obj), group_column, f"{p}:{lineno}", "--seed-group-column"))
        for c in (c for c in cols if c):
            if c not in obj:
                raise SeedError(f"{p}:{lineno}: no column '{c}' (columns: {', '.join(obj) or 'none'})")
        texts, groups = _collect([obj], cols[0], cols[1])
        out.texts += texts
        if out.groups is not None and groups is not None:
            out.groups += groups
    return out


def _from_csv(p: Path, column: str | None, group_column: str | None, delimiter: str, stats: TextChanges) -> CaptionRows:
    reader = csv.DictReader(io.StringIO("\n".join(_decode_lines(p, stats))), delimiter=delimiter)
    try:
        names = list(reader.fieldnames or [])
        col = pick_column(names, column, str(p))
        group = group_column and pick_column(names, group_column, str(p), "--seed-group-column")
        rows = []
        for row in reader:
            for c in (c for c in (col, group) if c):
                if row[c] is None:  # a short row: the column is missing, not empty
                    raise SeedError(f"{p}:{reader.line_num}: no value for column '{c}' (row has {len(row) - 1} "
                                    "field(s))")
            rows.append(row)
    except csv.Error as e:
        raise SeedError(f"{p}:{reader.line_num}: not valid {'TSV' if delimiter == chr(9) else 'CSV'} ({e})") from None
    texts, groups = _collect(rows, col, group)
    return CaptionRows(texts, groups)


def _from_parquet(p: Path, column: str | None, group_column: str | None) -> CaptionRows:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(p).names
    except Exception as e:
        raise SeedError(f"{p}: not a readable Parquet file ({e})") from e
    col = pick_column(names, column, str(p))
    group = group_column and pick_column(names, group_column, str(p), "--seed-group-column")
    table = pq.read_table(p, columns=[c for c in dict.fromkeys((col, group)) if c])  # only the needed columns
    texts, groups = _collect(table.to_pylist(), col, group)
    return CaptionRows(texts, groups)


def read_file(p: Path, column: str | None, group_column: str | None, stats: TextChanges) -> CaptionRows:
    suffix = p.suffix.lower()
    if suffix in (".txt", ""):
        if group_column:
            raise SeedError(f"{p}: a .txt file has no columns, so no --seed-group-column '{group_column}' "
                            "(use .csv/.jsonl/.parquet)")
        rows = CaptionRows(_decode_lines(p, stats))
    elif suffix in (".jsonl", ".json"):
        rows = _from_jsonl(p, column, group_column, stats)
    elif suffix in (".csv", ".tsv"):
        rows = _from_csv(p, column, group_column, "\t" if suffix == ".tsv" else ",", stats)
    elif suffix == ".parquet":
        rows = _from_parquet(p, column, group_column)
    else:
        raise SeedError(f"{p}: unsupported seed file type '{suffix}' (use .txt, .jsonl, .csv, .tsv, .parquet, "
                        "a dataset folder or a Hub id)")
    rows.origin = {"kind": "file", "sha256": file_sha256(p)}
    return rows


def _columns(ds: Any) -> list[str]:
    names = getattr(ds, "column_names", None)
    if names:
        return list(names)
    first = next(iter(ds.take(1)), None)  # a stream without declared features: its first row says
    return list(first) if first else []


def _check_hub(name: str, config: str | None, revision: str | None) -> None:
    """Fail fast, in one line, when the Hub cannot be reached (offline mode, no network)."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise SeedError(f"{name}: a Hub dataset id, but HF_HUB_OFFLINE is set so the Hub cannot be reached; "
                        "download the captions first and pass the file or the saved dataset folder to --seeds")
    try:
        HfApi().dataset_info(name, revision=revision, timeout=HUB_PROBE_TIMEOUT)
    except Exception as e:
        raise SeedError(f"{name}: cannot reach this Hub dataset ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                        "check the id, --seed-revision and the network, or pass a local file/folder") from None


def read_dataset(name: str, column: str | None, group_column: str | None, *, split: str | None = None,
                 config: str | None = None, revision: str | None = None) -> CaptionRows:
    """A saved dataset folder (memory-mapped) or a data folder / Hub id (streamed), only the needed columns."""

    p = Path(name).expanduser()
    try:
        if not p.is_dir():
            _check_hub(name, config, revision)
        ds: Any = open_dataset(name, split, config=config, revision=revision, streaming=not is_saved_dataset(p))
    except SeedError:
        raise
    except ValueError as e:  # a missing split: open_dataset names the ones there are
        raise SeedError(f"{e} (--seed-split)") from None
    except Exception as e:
        raise SeedError(f"{name}: cannot load as a dataset ({type(e).__name__}: {str(e).splitlines()[0][:300]})") \
            from None
    names = _columns(ds)
    col = pick_column(names, column, name)
    group = group_column and pick_column(names, group_column, name, "--seed-group-column")
    ds = ds.select_columns([c for c in dict.fromkeys((col, group)) if c])
    texts, groups = _collect(ds, col, group)
    origin = {"kind": "dataset folder" if p.is_dir() else "hub", "split": split, "config": config,
              "revision": revision}
    return CaptionRows(texts, groups, {k: v for k, v in origin.items() if v is not None})
