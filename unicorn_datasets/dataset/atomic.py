"""Atomic file and folder writes: a reader (or a rerun after kill -9) sees the old file or the new one, never half
of one.

The temporary name is `.NAME.tmp-PID` beside the target: the pattern the Hub push excludes and the
shard runner sweeps, so a crash never leaks a half file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write; it replaces `path` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def swap_folder(staged: Path, target: Path) -> None:
    """Put the fully written folder `staged` in place of `target` (an earlier `target` is removed first)."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(staged, target)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yields a temporary sibling folder to fill; it replaces `target` when the block ends without error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        swap_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
