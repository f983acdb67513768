"""Rank 0's work after each stage: final configs from shard parts, rejections, artifacts, card, summary.

Parts hold every input row (accepted or rejected, with raw model output); configs hold accepted
rows only, and artifacts/rejections.parquet holds the rest with their reason, so
rows in = rows out + rejections for every stage.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unicorn_datasets.dataset.atomic import atomic_path, write_text
from unicorn_datasets.dataset.card import write_card
from unicorn_datasets.dataset.layout import (
    CONFIGS,
    ENCODER,
    MANIFEST,
    REJECTIONS,
    REPORT,
    TEXT_MEAN,
    TRANSFER,
    artifact,
)
from unicorn_datasets.dataset.repo import BuildRepo, write_parquet

CONVERSATION = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
CAPTIONS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("seed", pa.string()),
        ("source", pa.string()),
        ("domain", pa.string()),  # domain seeds: the label's domain and the label; null for caption seeds
        ("label", pa.string()),
        ("caption", pa.string()),
        ("model", pa.string()),
        ("prompt_sha", pa.string()),
        ("gen_seed", pa.uint64()),
        ("attempts", pa.int32()),
        ("truncated", pa.bool_()),  # cut by max_new_tokens, kept trimmed (captions.keep_truncated)
        ("attempt_reasons", pa.list_(pa.string())),  # why earlier attempts of this row were rejected
    ]
)
INSTRUCT_COLUMNS = [
    ("id", pa.string()),
    ("task", pa.string()),
    ("conversations", CONVERSATION),
    ("model", pa.string()),
    ("prompt_sha", pa.string()),
    ("attempts", pa.int32()),
    ("repairs", pa.list_(pa.string())),
]
REJECT_INPUT = {"captions": "seed", "instruct": "caption"}
# Columns that parts written before they existed lack (a resumed build): value for such rows.
_PART_DEFAULTS = {"truncated": (pa.bool_(), False), "attempt_reasons": (pa.list_(pa.string()), []),
                  "server_error": (pa.string(), None), "domain": (pa.string(), None), "label": (pa.string(), None)}


def _with_defaults(table: pa.Table) -> pa.Table:
    for name, (typ, value) in _PART_DEFAULTS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, typ))
    return table


def _constant(table: pa.Table, name: str, value: str) -> pa.Table:
    return table.append_column(name, pa.array([value] * table.num_rows, pa.string()))


def _accepted(table: pa.Table, value_column: str) -> pa.Table:
    col = table.column(value_column)
    return table.slice(0, 0) if col.null_count == table.num_rows else table.filter(pc.is_valid(col))


class _Tally:
    """The counts the summary and card need, taken from each part as it streams into its config: one read."""

    def __init__(self) -> None:
        self.rows = 0
        self.reasons: Counter[str] = Counter()
        self.attempt_reasons: Counter[str] = Counter()  # failed attempts, accepted rows' retries included

    def add(self, t: pa.Table) -> pa.Table:
        self.rows += t.num_rows
        self.reasons.update(r for r in t.column("reject_reason").to_pylist() if r is not None)
        if "attempt_reasons" in t.column_names:
            self.attempt_reasons.update(r for rs in t.column("attempt_reasons").to_pylist() for r in rs or [])
        return t

    def summary(self) -> dict[str, Any]:
        return {"rows_in": self.rows, "rows_out": self.rows - sum(self.reasons.values()),
                "rejected": dict(self.reasons), "attempt_reasons": dict(self.attempt_reasons)}


REJECTIONS_SCHEMA = pa.schema(
    [("stage", pa.string()), ("id", pa.string()), ("reason", pa.string()), ("input", pa.string()),
     ("raw_output", pa.string()), ("attempts", pa.int32()), ("attempt_reasons", pa.list_(pa.string())),
     ("server_error", pa.string()),  # the server's last error when a request failed for good
     ("duplicate_of", pa.string())]  # near_duplicate rows: the id of the kept caption they repeat (near_dup.py)
)


def write_rejections(repo: BuildRepo) -> int:
    """All rejected rows of all LLM stages, with reason, input and the last raw model output."""
    tables = [REJECTIONS_SCHEMA.empty_table()]
    for stage, input_col in REJECT_INPUT.items():
        for t in repo.read_parts(stage) if (repo.work / stage).exists() else []:
            r = _with_defaults(t.filter(pc.is_valid(t.column("reject_reason"))))
            columns = [pa.array([stage] * r.num_rows), r.column("id"), r.column("reject_reason"),
                       r.column(input_col), r.column("raw_output"), r.column("attempts"),
                       r.column("attempt_reasons").cast(pa.list_(pa.string())), r.column("server_error"),
                       r.column("duplicate_of") if "duplicate_of" in r.column_names else pa.nulls(r.num_rows)]
            tables.append(pa.Table.from_arrays(columns, names=REJECTIONS_SCHEMA.names).cast(REJECTIONS_SCHEMA))
    table = pa.concat_tables(tables)
    write_parquet(table, repo.artifacts() / REJECTIONS)
    return table.num_rows


def assemble_captions(repo: BuildRepo, model: str, prompt_sha: str) -> dict[str, Any]:
    tally, truncated = _Tally(), 0
    delivered: dict[str, Counter[str]] = {"sources": Counter(), "domains": Counter()}  # the card's delivered mix

    def tables():
        nonlocal truncated
        for t in repo.read_parts("captions"):
            t = _with_defaults(tally.add(t))
            truncated += pc.sum(t.column("truncated")).as_py() or 0
            a = _constant(_constant(_accepted(t, "caption"), "model", model), "prompt_sha", prompt_sha)
            delivered["sources"].update(a.column("source").to_pylist())
            delivered["domains"].update(d for d in a.column("domain").to_pylist() if d is not None)
            yield a.select(CAPTIONS_SCHEMA.names)

    files = repo.write_config("captions", tables(), CAPTIONS_SCHEMA)
    write_rejections(repo)
    return {**tally.summary(), "files": files, "kept_truncated": int(truncated),
            "delivered": {k: dict(sorted(v.items())) for k, v in delivered.items()}}



def assemble_instruct(
    repo: BuildRepo, model: str, prompt_sha: str, *, selected: int, with_embeddings: bool = False
) -> dict[str, Any]:
    columns = list(INSTRUCT_COLUMNS)
    lookup: dict[str, np.ndarray] = {}
    emb_type: pa.DataType | None = None
    if with_embeddings:
        wanted = set()
        for t in repo.read_parts("instruct", ["id", "reject_reason"]):
            wanted.update(t.filter(pc.is_null(t.column("reject_reason"))).column("id").to_pylist())
        for t in repo.read_parts("pretrain", ["id", "embedding"]):
            keep = t.filter(pc.is_in(t.column("id"), pa.array(sorted(wanted), pa.string())))
            emb = _embedding_matrix(keep.column("embedding"))
            lookup.update(zip(keep.column("id").to_pylist(), emb))
            emb_type = emb_type or pa.list_(pa.from_numpy_dtype(emb.dtype), emb.shape[1]) if emb.size else emb_type
        if emb_type is not None:
            columns.insert(3, ("embedding", emb_type))
    schema = pa.schema(columns)

    tally = _Tally()
    tasks: Counter[str] = Counter()  # delivered rows per task

    def tables():
        for t in repo.read_parts("instruct"):
            tally.add(t)
            tasks.update(t.filter(pc.is_null(t.column("reject_reason"))).column("task").to_pylist())
            a = _accepted(t, "conversations")
            a = _constant(_constant(a, "model", model), "prompt_sha", prompt_sha)
            if emb_type is not None:
                mat = (
                    np.stack([lookup[i] for i in a.column("id").to_pylist()])
                    if a.num_rows
                    else np.zeros((0, emb_type.list_size))
                )
                a = a.append_column("embedding", _fixed_list(mat, emb_type))
            yield a.select(schema.names)

    files = repo.write_config("instruct", tables(), schema)
    write_rejections(repo)
    return {"selected": selected, **tally.summary(), "tasks": dict(tasks), "files": files}


def _embedding_matrix(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), -1)


def _fixed_list(mat: np.ndarray, typ: pa.DataType) -> pa.Array:
    values = pa.array(np.ascontiguousarray(mat).reshape(-1), typ.value_type)
    return pa.FixedSizeListArray.from_arrays(values, typ.list_size)


def assemble_pretrain(repo: BuildRepo, cfg: Any, transfer_info: dict[str, Any]) -> dict[str, Any]:
    schema: pa.Schema | None = None
    for t in repo.read_parts("pretrain", ["embedding"]):
        if t.num_rows:
            dim = len(t.column("embedding")[0])
            dtype = pa.float16() if cfg.embedding_dtype == "float16" else pa.float32()
            schema = pa.schema(
                [
                    ("id", pa.string()),
                    ("caption", pa.string()),
                    ("conversations", CONVERSATION),
                    ("embedding", pa.list_(dtype, dim)),
                ]
            )
            break
    if schema is None:
        raise RuntimeError("pretrain: no captions to transfer (every Stage-1 row was rejected)")

    def tables():
        for t in repo.read_parts("pretrain"):
            mat = _embedding_matrix(t.column("embedding"))
            t = t.set_column(
                t.schema.get_field_index("embedding"), "embedding", _fixed_list(mat, schema.field("embedding").type)
            )
            yield t.select(schema.names)

    files = repo.write_config("pretrain", tables(), schema)
    rows = sum(t.num_rows for t in repo.read_parts("pretrain", ["id"]))
    truncated = sum(pc.sum(t.column("truncated")).as_py() or 0 for t in repo.read_parts("encode", ["truncated"]))
    return {
        "rows_in": rows,
        "rows_out": rows,
        "rejected": {},
        "files": files,
        "transfer": transfer_info,
        "dim": schema.field("embedding").type.list_size,
        "truncated_by_encoder": int(truncated),
    }


def save_transfer_artifacts(repo: BuildRepo, mean: np.ndarray, info: dict[str, Any]) -> None:
    art = repo.artifacts()
    with atomic_path(art / TEXT_MEAN) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(mean, dtype=np.float64))
    write_text(
        art / TRANSFER,
        json.dumps(
            {**info, "mean_file": artifact(TEXT_MEAN), "mean_dtype": "float64", "dim": int(mean.shape[0])},
            indent=2,
        ),
    )
    write_text(repo.work / ENCODER, json.dumps(info.get("encoder", {})))


def finish(
    repo: BuildRepo,
    recipe: dict[str, Any],
    fp: str,
    seed_stats: dict[str, Any],
    n_seeds: int,
    provenance: dict[str, Any],
    run_stats: dict[str, dict[str, Any]],
    *,
    llm: dict[str, Any],
    code_version: str,
    wall: float,
) -> dict[str, Any]:
    stages = {s: repo.stage_summary(s) for s in CONFIGS if repo.stage_complete(s)}
    manifest = {
        "recipe": recipe,
        "fingerprint": fp,
        "code_version": code_version,
        "seeds": {"selected": n_seeds, **seed_stats},
        "llm": llm,
        "provenance": provenance,
        "stages": stages,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "diversity": _diversity(repo, recipe),
    }
    write_text(repo.artifacts() / MANIFEST, json.dumps(manifest, indent=2, default=str))
    write_card(repo.out, manifest)
    summary = {"stages": stages, "run": run_stats, "wall_seconds": wall, "diversity": manifest["diversity"]}
    print_summary(summary)
    return summary


def _diversity(repo: BuildRepo, recipe: dict[str, Any]) -> dict[str, Any]:
    """Synth²-style balance of the caption text (k-means at the recipe's report.k), written to
    artifacts/report.json; the settings come from this build's recipe, not a manifest of an earlier run."""
    from unicorn_datasets.analysis.report import report, settings_from_recipe

    if not (repo.out / "captions").exists():
        return {}
    r = report(repo.out, settings=settings_from_recipe(recipe))
    c = r.get("clustering", {})
    return {"k": r.get("k"), "top5_share": r.get("top5_share"), "entropy": r.get("entropy"),
            "entropy_normalised": r.get("entropy_normalised"), "ttr": r.get("text", {}).get("ttr_mean_per_caption"),
            "n_captions": r.get("n_captions"), "clustered": c.get("clustered"), "encoder": c.get("embeddings"),
            "status": c.get("status"), "why": c.get("why"), "rows_clustered": c.get("rows_clustered"),
            "concepts": r.get("concepts"), "seed_balance": r.get("seed_balance")}


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _reasons(counts: dict[str, int], rows_in: int | None) -> str:
    """`reason=count (rate)` per reason; the rate is of the stage's rows in."""
    return ", ".join(f"{k}={v}" + (f" ({v / rows_in:.1%})" if rows_in else "") for k, v in sorted(counts.items()))


def print_summary(summary: dict[str, Any]) -> None:
    lines = [
        "",
        "build summary",
        f"{'stage':<10}{'rows in':>9}{'rows out':>10}{'rejected':>10}  {'shards run/skipped':<20}"
        f"{'tokens':>9}{'seconds':>9}{'tok/s':>8}  rejections by reason",
    ]
    for stage in ("captions", "instruct", "encode", "pretrain"):
        s = summary["stages"].get(stage, {})
        r = summary["run"].get(stage)
        if not s and not r:
            continue
        r = r or {}
        rejected = s.get("rejected", {})
        secs = r.get("seconds", 0.0)
        tokens = r.get("tokens_run", 0)
        rate = f"{tokens / secs:.1f}" if secs and tokens else "-"
        shards = f"{r.get('shards_run', 0)}/{r.get('shards_skipped', 0)}"
        lines.append(
            f"{stage:<10}{s.get('rows_in', r.get('rows_run', 0)):>9}{s.get('rows_out', '-'):>10}"
            f"{sum(rejected.values()):>10}  {shards:<20}{tokens:>9}{secs:>9.1f}{rate:>8}  "
            + (_reasons(rejected, s.get("rows_in", 0)) or "-")
        )
        if s.get("attempt_reasons"):
            lines.append(f"{'':<10}failed attempts (retries included): {_reasons(s['attempt_reasons'], None)}")
    for stage, r in summary["run"].items():
        if "requests" in r:
            lines.append(f"{stage}: {r['requests']} request(s) sent, {r.get('replayed', 0)} generation(s) replayed "
                         f"from the journal, {r.get('retries', 0)} retries, {r.get('server_errors', 0)} server "
                         f"error(s), at most {r.get('max_in_flight_seen', 0)} in flight")
    pre = summary["stages"].get("pretrain", {})
    if pre:
        lines.append(f"Stage 3: {pre.get('dim')}-d embeddings, {pre.get('truncated_by_encoder', 0)} caption(s) "
                     "truncated by the encoder's token limit")
    div = summary.get("diversity") or {}
    if div.get("status") == "not enough rows":
        lines.append(f"diversity: not enough rows ({div.get('why')}) ({artifact(REPORT)})")
    elif div.get("entropy") is not None:
        lines.append(f"diversity of the caption text ({div.get('encoder')}): k={div['k']} clusters, top-5 share "
                     f"{_num(div.get('top5_share'))} (Synth² 0.577), normalised entropy "
                     f"{_num(div.get('entropy_normalised'))}, mean per-caption TTR {_num(div.get('ttr'))} "
                     f"({artifact(REPORT)})")
    lines.append(f"wall time {summary['wall_seconds']:.1f}s (tokens and tok/s count this run's generation only)")
    print("\n".join(lines), file=sys.stderr, flush=True)
