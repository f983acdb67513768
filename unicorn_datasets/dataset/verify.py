"""A work area that heals: what a rerun trusts is checked first, cheaply, and what is damaged is redone.

- A shard part is trusted when its size is the one recorded in its sidecar at landing (a stat, no read);
  a part from before sizes were recorded, or whose size differs, is trusted only if its Parquet footer
  reads and holds the recorded row count. A damaged part (or an unreadable sidecar) is removed, so the
  shard runs again; its stage, if assembled, is assembled again.
- A published config file (OUT/<config>/train-*.parquet) listed by a complete stage must exist and its
  footer must read; if not, every stage that wrote the file is assembled again from its parts.
- A completion marker or a cache (llm.json, encoder.json) that is not JSON is removed and rebuilt.

Each finding is one line naming the file and what happens to it. Run by rank 0 holding the lock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from unicorn_datasets.dataset.layout import COMPLETE, ENCODER, JOURNAL

_CACHES = ("llm.json", ENCODER)  # rewritten by the run that needs them


def _json(path: Path) -> Any:
    """The parsed file; raises ValueError (with the reason) when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not valid JSON ({e})") from None


def part_problem(part: Path, sidecar: Path) -> str | None:
    """Why a landed part cannot be trusted (None: it can)."""
    try:
        meta = _json(sidecar) if sidecar.exists() else {}
    except ValueError as e:
        return f"its sidecar {sidecar.name} is {e}"
    if not isinstance(meta, dict):
        return f"its sidecar {sidecar.name} is not a mapping"
    size = part.stat().st_size
    if meta.get("bytes") == size:
        return None
    recorded = f", {meta['bytes']} recorded when it landed" if "bytes" in meta else ""
    try:
        rows = pq.read_metadata(part).num_rows
    except Exception:  # truncated, overwritten, not Parquet: pyarrow raises several types
        return f"its Parquet footer does not read; {size} bytes on disk{recorded}"
    if "bytes" in meta:
        return f"it is {size} bytes, {meta['bytes']} recorded when it landed"
    if meta.get("rows") is not None and int(meta["rows"]) != rows:
        return f"it holds {rows} rows, {meta['rows']} recorded when it landed"
    return None


def _stage_dirs(work: Path) -> list[Path]:
    return sorted(p for p in work.iterdir() if p.is_dir() and p.name not in (JOURNAL, "staging"))


def check_parts(work: Path) -> list[str]:
    """Remove every damaged part (and its sidecar); un-complete the stage that holds it. Returns findings."""
    findings = []
    for folder in _stage_dirs(work):
        damaged = []
        for part in sorted(folder.glob("part-*.parquet")):
            sidecar = part.with_suffix(".json")
            why = part_problem(part, sidecar)
            if why is not None:
                damaged.append(part)
                part.unlink(missing_ok=True)
                sidecar.unlink(missing_ok=True)
                findings.append(f"{folder.name}: part {part.relative_to(work.parent)} is damaged ({why}); "
                                "it is made again")
        if damaged and (folder / COMPLETE).exists():
            (folder / COMPLETE).unlink()
            findings.append(f"{folder.name}: assembled again, from its parts")
    return findings


def check_markers(work: Path) -> list[str]:
    """Completion markers and caches that are not JSON: removed (the stage is assembled again)."""
    findings = []
    for marker in [f / COMPLETE for f in _stage_dirs(work)] + [work / c for c in _CACHES]:
        if not marker.exists():
            continue
        try:
            _json(marker)
        except ValueError as e:
            marker.unlink()
            what = "assembled again" if marker.name == COMPLETE else "rebuilt when needed"
            findings.append(f"{marker.relative_to(work.parent)} is {e}; removed, {what}")
    return findings


def check_published(out: Path, work: Path) -> list[str]:
    """Published config files of complete stages that are missing or whose footer does not read: every stage
    that lists such a file is un-completed, so the build assembles it again from its parts."""
    summaries = {}
    for folder in _stage_dirs(work):
        if (folder / COMPLETE).exists():
            summaries[folder] = _json(folder / COMPLETE)
    bad: dict[str, str] = {}
    for summary in summaries.values():
        for name in summary.get("files", []) if isinstance(summary, dict) else []:
            if name in bad:
                continue
            path = out / name
            if not path.is_file():
                bad[name] = "it is missing"
                continue
            try:
                pq.read_metadata(path)
            except Exception:
                bad[name] = "its Parquet footer does not read"
    findings = [f"published {name} is damaged ({why}); its config is assembled again from the parts in .build/"
                for name, why in sorted(bad.items())]
    for folder, summary in summaries.items():
        if isinstance(summary, dict) and bad.keys() & set(summary.get("files", [])):
            (folder / COMPLETE).unlink()
    return findings


def heal(out: Path, work: Path) -> list[str]:
    """Every check above, in order; returns what was found (empty for a healthy work area)."""
    if not work.is_dir():
        return []
    return check_markers(work) + check_published(out, work) + check_parts(work)
