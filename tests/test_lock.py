"""The lock that always resumes: a dead, zombie or exiting holder is waited for; only a live build is refused."""

from __future__ import annotations

import fcntl
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from unicorn_datasets.dataset.repo import BuildRepo, RepoError, _start_time, holder_state


def _hold(out: Path, holder_line: str):
    """Take OUT's lock in another open file (as another process would) and record `holder_line`."""
    (out / ".build").mkdir(parents=True, exist_ok=True)
    held = open(out / ".build" / "lock", "a+")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.truncate(0)
    held.write(holder_line + "\n")
    held.flush()
    return held


def _release_later(held, seconds: float) -> threading.Thread:
    """The kernel closing a killed process's files some time after the kill."""
    t = threading.Timer(seconds, held.close)
    t.start()
    return t


def _zombie() -> subprocess.Popen:
    child = subprocess.Popen(["sleep", "60"])
    child.send_signal(signal.SIGKILL)  # killed, not reaped: a zombie until we wait() for it
    for _ in range(100):
        if holder_state(f"pid {child.pid}") == "zombie":
            return child
        time.sleep(0.05)
    raise AssertionError("the killed child never became a zombie")


def test_zombie_holder_is_waited_for_then_the_rerun_goes_through(tmp_path: Path, capsys) -> None:
    child = _zombie()
    try:
        held = _hold(tmp_path, f"pid {child.pid} start {_start_time(child.pid)} since now")
        _release_later(held, 1.0)
        repo = BuildRepo(tmp_path)
        repo.acquire_lock(wait_s=30)
        assert "is zombie; waiting" in capsys.readouterr().err
        assert holder_state((tmp_path / ".build" / "lock").read_text()) == "live"  # now ours
        repo.release_lock()
    finally:
        child.wait()


def test_dead_holder_whose_lock_is_not_yet_released_is_waited_for(tmp_path: Path, capsys) -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # gone: its pid no longer exists
    held = _hold(tmp_path, f"pid {child.pid} start 12345 since now")
    _release_later(held, 0.5)
    repo = BuildRepo(tmp_path)
    repo.acquire_lock(wait_s=30)
    assert "is dead; waiting" in capsys.readouterr().err
    repo.release_lock()


def test_live_holder_is_refused_with_its_pid(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        held = _hold(tmp_path, f"pid {child.pid} start {_start_time(child.pid)} since now")
        with pytest.raises(RepoError, match=f"another build is writing into .*pid {child.pid}.*wait for it or kill"):
            BuildRepo(tmp_path).acquire_lock(wait_s=30)
        held.close()
    finally:
        child.kill()
        child.wait()


def test_a_reused_pid_is_not_the_holder(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:  # same pid number, other start time: the recorded holder died and the number was reused
        assert holder_state(f"pid {child.pid} start 1 since then") == "dead"
        assert holder_state(f"pid {child.pid} start {_start_time(child.pid)} since then") == "live"
        assert holder_state("") == "live"  # a lock we cannot judge is never stolen
    finally:
        child.kill()
        child.wait()


def test_a_dead_holder_that_never_releases_ends_in_a_clear_error(tmp_path: Path) -> None:
    child = _zombie()
    try:
        held = _hold(tmp_path, f"pid {child.pid} start {_start_time(child.pid)} since now")
        with pytest.raises(RepoError, match="still not released after"):
            BuildRepo(tmp_path).acquire_lock(wait_s=0.5)
        held.close()
    finally:
        child.wait()


def test_a_rerun_removes_the_temporary_files_a_killed_run_left_beside_published_ones(tmp_path: Path) -> None:
    repo = BuildRepo(tmp_path)
    repo.start({"name": "x"}, "fp", overwrite=False)
    (tmp_path / "artifacts").mkdir()
    stray = [tmp_path / ".README.md.tmp-123", tmp_path / "artifacts" / ".text_mean.npy.tmp",
             tmp_path / "artifacts" / ".rejections.parquet.tmp-9"]
    for p in stray:
        p.write_text("half")
    (tmp_path / "artifacts" / "keep.json").write_text("{}")
    assert repo.start({"name": "x"}, "fp", overwrite=False)  # resuming
    assert not any(p.exists() for p in stray) and (tmp_path / "artifacts" / "keep.json").exists()
