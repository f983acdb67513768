"""Export a built dataset folder to what the authors' Bunny-based trainer reads.

For each config (``pretrain``, ``instruct``):
- ``{config}.json``: a JSON list of ``{"id": str, "conversations": [{"from", "value"}, ...]}`` (LLaVA
  format; ``<image>`` stays in the first human turn; it is added there, and counted, if missing);
- ``{config}_embeds.pkl``: a pickled list of ``{"id": str, "embed": np.ndarray [D]}``, same ids in the
  same order as the JSON; with ``chunk_size`` it is split into ``{config}_embeds_00000.pkl``, ... of at
  most ``chunk_size`` rows each (the trainer concatenates the lists in file-name order).
Files are written into a staging folder and moved in with os.replace once complete; rows are
streamed in Arrow batches.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .contract import assert_rows

__all__ = ["DEFAULT_CONFIGS", "IMAGE_TOKEN", "export_bunny"]

DEFAULT_CONFIGS = ("pretrain", "instruct")
IMAGE_TOKEN = "<image>"
_BATCH_ROWS = 4096


def _embeddings(col: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
    """Arrow list/fixed-size-list column -> [N, D] numpy without going through Python floats."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if arr.null_count:
        raise ValueError(f"{where}: {arr.null_count} rows have no embedding")
    if pa.types.is_fixed_size_list(arr.type):
        dim = arr.type.list_size
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = np.asarray(arr.value_lengths())
        if n and (lengths != lengths[0]).any():
            raise ValueError(f"{where}: embeddings have different lengths ({lengths.min()}..{lengths.max()})")
        dim = int(lengths[0]) if n else 0
    else:
        raise ValueError(f"{where}: 'embedding' column has type {arr.type}, expected a list of floats")
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(n, dim) if n else np.zeros((0, dim), dtype=values.dtype)


def _conversations(conv: Any, where: str) -> tuple[list[dict[str, str]], bool]:
    """Normalise to [{"from", "value"}]; make sure the first human turn carries <image>."""
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"{where}: 'conversations' must be a non-empty list")
    turns = []
    for t in conv:
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise ValueError(f"{where}: every turn needs 'from' and 'value', got {t!r}")
        turns.append({"from": str(t["from"]), "value": str(t["value"])})
    first_human = next((t for t in turns if t["from"] == "human"), None)
    if first_human is None:
        raise ValueError(f"{where}: no human turn")
    if IMAGE_TOKEN in first_human["value"]:
        return turns, False
    first_human["value"] = IMAGE_TOKEN + "\n" + first_human["value"]
    return turns, True


def _batches(ds: Any) -> Iterator[pa.Table]:
    table = ds.with_format("arrow")
    for start in range(0, len(ds), _BATCH_ROWS):
        yield table[start : start + _BATCH_ROWS]


def _available_configs(out_dir: str) -> list[str]:
    from datasets import get_dataset_config_names

    try:
        return list(get_dataset_config_names(out_dir))
    except Exception as e:  # unreadable card/folder: name the folder in the message
        raise ValueError(f"cannot read dataset configs from {out_dir}: {e}") from e


def _export_config(ds: Any, config: str, to: Path, chunk_size: int | None, dtype: np.dtype) -> dict[str, Any]:
    for col in ("id", "conversations", "embedding"):
        if col not in ds.column_names:
            raise ValueError(f"config {config!r}: missing column {col!r} (has {', '.join(ds.column_names)})")
    # Everything is written into a staging folder next to the target and moved in only once complete,
    # so a failure leaves the previous export (if any) untouched.
    stage = Path(tempfile.mkdtemp(dir=to, prefix=f".export-{config}-"))
    try:
        info = _write_config(ds, config, stage, chunk_size, dtype)
        # Stale files of an earlier export (more chunks, or the other layout) would break the one-to-one
        # join of a trainer that globs {config}_embeds*.pkl.
        for old in [to / f"{config}_embeds.pkl", *to.glob(f"{config}_embeds_[0-9][0-9][0-9][0-9][0-9].pkl")]:
            if old.name not in info["pickles"]:
                old.unlink(missing_ok=True)
        for name in [*info["pickles"], info["json"]]:  # json last: its presence marks a finished export
            os.replace(stage / name, to / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return info


def _write_config(
    ds: Any, config: str, stage: Path, chunk_size: int | None, dtype: np.dtype
) -> dict[str, Any]:
    seen: set[str] = set()
    added = 0
    dim: int | None = None
    pickles: list[str] = []
    pending: list[dict[str, Any]] = []  # embedding records not yet written to a pickle
    n = 0

    def dump(name: str, records: list[dict[str, Any]]) -> None:
        with open(stage / name, "wb") as f:
            pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL)
        pickles.append(name)

    with open(stage / f"{config}.json", "wb") as f:
        f.write(b"[")
        for table in _batches(ds):
            ids = [str(x) for x in table.column("id").to_pylist()]
            convs = table.column("conversations").to_pylist()
            tasks = table.column("task").to_pylist() if "task" in table.column_names else [None] * len(ids)
            emb = _embeddings(table.column("embedding"), f"config {config!r}, rows {n}..{n + len(ids) - 1}")
            if dim is None:
                dim = int(emb.shape[1])
            elif emb.shape[1] != dim:
                raise ValueError(f"config {config!r}: embedding size changes from {dim} to {emb.shape[1]}")
            for k, (rid, conv) in enumerate(zip(ids, convs, strict=True)):
                where = f"config {config!r}, row {n} (id {rid!r})"
                if rid in seen:  # the trainer joins by id: duplicates would be ambiguous
                    raise ValueError(f"{where}: duplicate id")
                seen.add(rid)
                turns, was_added = _conversations(conv, where)
                added += was_added
                assert_rows(config, [{"id": rid, "task": tasks[k], "conversations": turns, "embedding": emb[k]}], dim)
                record = json.dumps({"id": rid, "conversations": turns}, ensure_ascii=False)
                f.write((b",\n" if n else b"\n") + record.encode())
                pending.append({"id": rid, "embed": emb[k].astype(dtype, copy=True)})
                n += 1
            while chunk_size is not None and len(pending) >= chunk_size:
                dump(f"{config}_embeds_{len(pickles):05d}.pkl", pending[:chunk_size])
                pending = pending[chunk_size:]
        f.write(b"\n]\n")
    if chunk_size is None:
        dump(f"{config}_embeds.pkl", pending)
    elif pending or not pickles:  # an empty config still gets one (empty) chunk so readers find a file
        dump(f"{config}_embeds_{len(pickles):05d}.pkl", pending)
    return {
        "rows": n,
        "dim": dim,
        "json": f"{config}.json",
        "pickles": pickles,
        "image_token_added": added,
        "embed_dtype": str(dtype),
    }


def export_bunny(
    out_dir: str | os.PathLike[str],
    to_dir: str | os.PathLike[str],
    *,
    configs: Sequence[str] | None = DEFAULT_CONFIGS,
    chunk_size: int | None = None,
    embed_dtype: str = "float32",
    missing_ok: bool = False,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Write ``{config}.json`` and ``{config}_embeds*.pkl`` for each config of the dataset folder.

    ``configs=None`` exports whichever of pretrain/instruct exist. A requested config that the folder
    lacks is an error unless ``missing_ok`` (then it is listed under ``skipped``). ``embed_dtype``:
    float32 (default, the paper) or float16 (the authors' later, smaller format).
    """
    from datasets import load_dataset

    t0 = time.monotonic()
    if chunk_size is not None and chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if embed_dtype not in ("float32", "float16"):
        raise ValueError(f"embed_dtype must be float32 or float16, got {embed_dtype!r}")
    src = os.fspath(out_dir)
    if not Path(src).is_dir():
        raise FileNotFoundError(f"dataset folder not found: {src}")
    available = _available_configs(src)
    wanted = [c for c in DEFAULT_CONFIGS if c in available] if configs is None else list(configs)
    skipped = [c for c in wanted if c not in available]
    if skipped and not missing_ok and configs is not None:
        raise ValueError(f"{src} has no config(s) {', '.join(skipped)} (available: {', '.join(available)})")
    wanted = [c for c in wanted if c in available]
    if not wanted:
        raise ValueError(
            f"nothing to export from {src}: none of {list(configs or DEFAULT_CONFIGS)} present "
            f"(available: {', '.join(available)})"
        )
    to = Path(to_dir)
    to.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"source": src, "to": str(to), "configs": {}, "skipped": skipped}
    for config in wanted:
        ds = load_dataset(src, config, split="train", cache_dir=cache_dir)
        result["configs"][config] = _export_config(ds, config, to, chunk_size, np.dtype(embed_dtype))
    result["seconds"] = round(time.monotonic() - t0, 3)
    return result
