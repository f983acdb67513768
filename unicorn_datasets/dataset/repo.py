"""The dataset folder: what OUT holds, how shards land atomically, resume, lock, final configs.

OUT/README.md and OUT/<config>/train-*.parquet are exactly what goes to the Hub. Work in
progress lives in OUT/.build/ (never pushed): the build state (recipe fingerprint), the lock,
and one Parquet part per finished shard and stage. A part exists only once complete (written to
a temporary name, then renamed), so a rerun after kill -9 skips exactly the finished shards.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from unicorn_datasets.dataset.atomic import atomic_path, swap_folder, write_text
from unicorn_datasets.dataset.contract import assert_table
from unicorn_datasets.dataset.layout import ARTIFACTS, COMPLETE, CONFIG_FILES, LOCK, OUR_FILES, STAGING, STATE, WORK

ROW_GROUP_BYTES = 100 * 1024 * 1024  # the Hub viewer wants row groups well under ~300 MB
FILE_BYTES = 500 * 1024 * 1024


LOCK_WAIT_S = 60.0  # how long a rerun waits for a dead holder's lock to be released


class RepoError(RuntimeError):
    pass


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (state first), or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str:
    fields = _proc_stat(pid)
    return fields[19] if fields else "?"  # field 22 of stat: start time in clock ticks since boot


_PF_EXITING = 0x4  # task flag set from the start of do_exit()


def holder_state(holder: str) -> str:
    """'live', 'dead', 'zombie' or 'exiting' for the lock line `pid N start T ...` of a lock holder.

    An unreadable line counts as live (never steal a lock we cannot judge); a pid whose start time
    differs from the recorded one is a new process that reused the number: the holder is dead."""
    m = re.match(r"pid (\d+)(?: start (\S+))?", holder)
    if not m or not Path("/proc/self/stat").exists():  # no /proc (not Linux): cannot judge, never steal
        return "live"
    fields = _proc_stat(int(m.group(1)))
    if fields is None or fields[0] in "XxZ":
        return "dead" if fields is None or fields[0] in "Xx" else "zombie"
    if m.group(2) not in (None, "?") and fields[19] != m.group(2):
        return "dead"
    if int(fields[6]) & _PF_EXITING or _sigkill_pending(int(m.group(1))):
        return "exiting"
    return "live"


def _sigkill_pending(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    masks = re.findall(r"^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)", status, re.MULTILINE)
    return any(int(mask, 16) & (1 << 8) for mask in masks)  # bit 8: signal 9 (SIGKILL)


def write_parquet(table: pa.Table, path: Path, *, row_group_bytes: int = ROW_GROUP_BYTES) -> None:
    """Write with row groups sized by bytes (not rows) and a page index; atomic rename at the end."""
    with atomic_path(path) as tmp:
        _write_table(table, tmp, row_group_bytes)


def _write_table(table: pa.Table, path: Path, row_group_bytes: int = ROW_GROUP_BYTES) -> None:
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    rows_per_group = max(1, row_group_bytes // per_row)
    pq.write_table(table, path, row_group_size=rows_per_group, write_page_index=True, compression="zstd")


class BuildRepo:
    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.work = self.out / WORK
        self._lock_fd: IO[str] | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def check_target(self, overwrite: bool) -> None:
        """Refuse to write into a folder that holds something other than a build of ours."""
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise RepoError(f"--out {self.out} exists and is not a folder")
        if (self.work / STATE).exists():
            return  # ours
        if overwrite and self.work.is_dir() and {p.name for p in self.out.iterdir()} <= OUR_FILES | self._configs():
            return  # ours, its state lost: --overwrite starts it again
        # Not ours: anything but our work area is the user's, even a README.md or a folder named like a config.
        foreign = sorted(p.name for p in self.out.iterdir() if p.name != WORK)
        if foreign:
            raise RepoError(
                f"--out {self.out} already holds files that are not a unicorn-datasets build "
                f"({', '.join(foreign[:5])}); choose another folder"
            )

    def acquire_lock(self, wait_s: float = LOCK_WAIT_S) -> None:
        """One build per OUT at a time. flock dies with its process, so kill -9 leaves no stale lock; but
        the kernel releases it only when the dying process's files close, which for a process holding a
        big model can be seconds after the kill. So a holder that is dead, a zombie or exiting is waited
        for (up to `wait_s`, saying so); only a live build is refused."""
        self.work.mkdir(parents=True, exist_ok=True)
        fd = open(self.work / LOCK, "a+")
        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fd.seek(0)
                holder = fd.read().strip()
                state = holder_state(holder)
                if state == "live" or (deadline is not None and time.monotonic() > deadline):
                    fd.close()
                    why = "wait for it or kill it" if state == "live" else f"still not released after {wait_s:.0f} s"
                    who = holder or "pid unknown"
                    raise RepoError(f"another build is writing into {self.out} ({who}); {why}") from None
                if deadline is None:
                    deadline = time.monotonic() + wait_s
                    print(f"[unicorn] the build that held {self.out} ({holder}) is {state}; waiting up to "
                          f"{wait_s:.0f} s for the system to release its lock, then resuming", file=sys.stderr,
                          flush=True)
                time.sleep(0.2)
        fd.seek(0)
        fd.truncate()
        fd.write(f"pid {os.getpid()} start {_start_time(os.getpid())} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fd.flush()
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            self._lock_fd.close()
            self._lock_fd = None

    def start(self, recipe: dict[str, Any], fp: str, *, overwrite: bool) -> bool:
        """Check or write the build state. Returns True when resuming an earlier build."""
        self.remove_stale_published_tmp()  # we hold the lock: any temporary file is a dead run's
        state_path = self.work / STATE
        state = _read_state(state_path, overwrite) if state_path.exists() else None
        if state is not None:
            if state["fingerprint"] == fp and not overwrite:
                return True
            if not overwrite:
                raise RepoError(
                    f"{self.out} holds a build of recipe '{state['recipe'].get('name')}' with other settings "
                    f"(fingerprint {state['fingerprint']}, this command: {fp}; first difference: "
                    f"{_first_difference(state['recipe'], recipe)}). Use --overwrite to replace it, or another --out."
                )
        if overwrite:
            self.clear()
        self.work.mkdir(parents=True, exist_ok=True)
        write_text(
            state_path, json.dumps({"fingerprint": fp, "recipe": recipe, "started": time.time()}, indent=2, default=str)
        )
        return False

    def remove_stale_published_tmp(self) -> None:
        """Temporary files an interrupted atomic write left beside what gets pushed (card, artifacts)."""
        for folder in (self.out, self.out / ARTIFACTS):
            for p in folder.glob(".*.tmp*") if folder.is_dir() else []:
                p.unlink(missing_ok=True)

    def _configs(self) -> set[str]:
        """The folders in OUT that hold published config files (the stages' outputs)."""
        return {p.parent.name for p in self.out.glob(f"*/{CONFIG_FILES}")}

    def clear(self) -> None:
        """Everything a build wrote into OUT (called only on a folder that holds a build of ours)."""
        for name in (OUR_FILES | self._configs()) - {WORK}:
            p = self.out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for p in self.work.iterdir() if self.work.exists() else []:
            if p.name != LOCK:
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    # ---- shard parts -----------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        d = self.work / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def part_path(self, stage: str, shard: int) -> Path:
        return self.stage_dir(stage) / f"part-{shard:05d}.parquet"

    def remove_stale_tmp(self, stage: str) -> int:
        stale = list(self.stage_dir(stage).glob(".*.tmp-*"))
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def done_shards(self, stage: str) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.stage_dir(stage).glob("part-*.parquet")}

    def write_part(self, stage: str, shard: int, table: pa.Table, meta: dict[str, Any]) -> None:
        """Sidecar first, part last: a part's existence is the only 'done' signal. The sidecar records the
        part's rows and size, which a rerun checks before trusting it (dataset/verify.py)."""
        with atomic_path(self.part_path(stage, shard)) as tmp:
            _write_table(table, tmp)
            meta = {**meta, "rows": table.num_rows, "bytes": tmp.stat().st_size}
            write_text(self._sidecar(stage, shard), json.dumps(meta))

    def _sidecar(self, stage: str, shard: int) -> Path:
        return self.stage_dir(stage) / f"part-{shard:05d}.json"

    def shard_meta(self, stage: str, shard: int) -> dict[str, Any]:
        """The sidecar written with a part ({} when it is missing)."""
        path = self._sidecar(stage, shard)
        return json.loads(path.read_text()) if path.exists() else {}

    def part_rows(self, stage: str, shard: int) -> int:
        """Rows of a landed part, from its sidecar (or the Parquet footer if the sidecar has none)."""
        rows = self.shard_meta(stage, shard).get("rows")
        return int(rows) if rows is not None else pq.ParquetFile(self.part_path(stage, shard)).metadata.num_rows

    def part_meta(self, stage: str) -> list[dict[str, Any]]:
        return list(self.part_meta_by_shard(stage).values())

    def part_meta_by_shard(self, stage: str) -> dict[int, dict[str, Any]]:
        """{shard: the sidecar of its landed part}, in shard order."""
        return {shard: self.shard_meta(stage, shard) for shard in sorted(self.done_shards(stage))}

    def read_parts(self, stage: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for shard in sorted(self.done_shards(stage)):
            yield pq.read_table(self.part_path(stage, shard), columns=columns)

    def stage_complete(self, stage: str) -> bool:
        return (self.stage_dir(stage) / COMPLETE).exists()

    def mark_stage_complete(self, stage: str, summary: dict[str, Any]) -> None:
        write_text(self.stage_dir(stage) / COMPLETE, json.dumps(summary, indent=2, default=str))

    def stage_summary(self, stage: str) -> dict[str, Any]:
        p = self.stage_dir(stage) / COMPLETE
        return json.loads(p.read_text()) if p.exists() else {}

    # ---- final configs ---------------------------------------------------------------------
    def write_config(self, config: str, tables: Iterator[pa.Table], schema: pa.Schema) -> list[str]:
        """Stream tables into OUT/<config>/train-XXXXX-of-YYYYY.parquet (files ~FILE_BYTES), staged then swapped in."""
        staging = self.work / STAGING / config
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        files: list[Path] = []
        writer: pq.ParquetWriter | None = None
        written = 0
        rows_per_group = 0
        pending: list[pa.Table] = []

        def flush(final: bool = False) -> None:
            nonlocal writer, written, pending
            if not pending:
                return
            t = pa.concat_tables([p.cast(schema) for p in pending])
            pending = []
            for start in range(0, t.num_rows, rows_per_group):
                chunk = t.slice(start, rows_per_group)
                if writer is None:
                    files.append(staging / f"part{len(files):05d}.parquet")
                    writer = pq.ParquetWriter(files[-1], schema, compression="zstd", write_page_index=True)
                writer.write_table(chunk, row_group_size=rows_per_group)
                written += chunk.nbytes
                if written >= FILE_BYTES:
                    writer.close()
                    writer, written = None, 0

        buffered = 0
        emb = schema.field("embedding").type if "embedding" in schema.names else None
        dim = emb.list_size if emb is not None and pa.types.is_fixed_size_list(emb) else None
        for t in tables:
            if t.num_rows == 0:
                continue
            assert_table(config, t, dim)  # a row that breaks the conversation contract is never published
            if not rows_per_group:
                rows_per_group = max(1, ROW_GROUP_BYTES // max(1, t.nbytes // t.num_rows))
            pending.append(t)
            buffered += t.num_rows
            if buffered >= rows_per_group:
                flush()
                buffered = 0
        rows_per_group = rows_per_group or 1
        flush(final=True)
        if writer is not None:
            writer.close()
        final = self.out / config
        if not files:  # `datasets` cannot load an empty split: an empty config is left out (and out of the card)
            shutil.rmtree(staging)
            if final.exists():
                shutil.rmtree(final)
            return []
        names = []
        for i, f in enumerate(files):
            name = f"train-{i:05d}-of-{len(files):05d}.parquet"
            f.rename(staging / name)
            names.append(f"{config}/{name}")
        swap_folder(staging, final)
        return names

    def artifacts(self) -> Path:
        d = self.out / ARTIFACTS
        d.mkdir(parents=True, exist_ok=True)
        return d


def _read_state(path: Path, overwrite: bool) -> dict[str, Any] | None:
    """The build state; None when it is damaged and --overwrite replaces it. Damaged without --overwrite: one
    line naming the file and the way out."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str) \
                or not isinstance(state.get("recipe"), dict):
            raise ValueError("it lacks the fingerprint or the recipe")
        return state
    except (ValueError, UnicodeDecodeError) as e:
        if overwrite:
            return None
        why = " ".join(str(e).split())
        raise RepoError(f"{path} is damaged ({why}); rerun with --overwrite to start this build again "
                        "(what it made so far is discarded), or use another --out") from None


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in ("out", "overwrite"):
                continue
            key = f"{path}.{k}" if path else k
            if (k in a) != (k in b):  # a key one version of the package has and the other lacks
                return f"{key}: {a[k]!r} -> (no such key)" if k in a else f"{key}: (no such key) -> {b[k]!r}"
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], key)
        return "none"
    return f"{path}: {a!r} -> {b!r}"
