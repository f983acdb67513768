"""Ctrl-C and SIGTERM end a build cleanly: one line, exit 130 / 143, the lock released, finished work kept, and
the same command resumes and finishes. A second signal ends the process at once."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, TINY_FLAGS, kill_tree, run_build, start_build

from unicorn_datasets.pipeline.interrupts import LINE
from unicorn_datasets.testing.fake_openai_server import serve

ACCELERATE_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
SERVER_FLAGS = ["--recipe", "demo", "--llm", "fake-model", "--prompt-mode", "chat", "--stages", "captions",
                "--set", "llm.timeout=5", "--set", "captions.min_words=20", "--shard-size", "4"]


def _journal_lines(out: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in (out / ".build" / "journal").rglob("*.jsonl"))


def _wait_until(cond, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the build ended before {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    kill_tree(proc)
    raise AssertionError(f"no {what} within {timeout} s")


def _interrupt(proc: subprocess.Popen, sig: int) -> str:
    """Send `sig` to the build (0: already sent); a build that does not end is killed and the test fails (no
    timing asserted)."""
    if sig:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise AssertionError("the build did not end after the signal") from None
    return out


def _lock_is_free(out: Path) -> bool:
    with open(out / ".build" / "lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def _rows_accounted(out: Path) -> int:
    """Captions published plus captions rejected: every seed of the build, once."""
    published = sum(pq.read_metadata(f).num_rows for f in (out / "captions").glob("*.parquet"))
    rejections = pq.read_table(out / "artifacts" / "rejections.parquet").to_pylist()
    return published + sum(r["stage"] == "captions" for r in rejections)


def _assert_clean_interrupt(log: str, rc: int, want_rc: int, out: Path) -> None:
    assert rc == want_rc, log[-3000:]
    assert log.rstrip().splitlines()[-1] == LINE, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert _lock_is_free(out)


@pytest.mark.parametrize("sig, want_rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_in_process_build_interrupted_mid_generation_ends_cleanly_and_resumes(
    tiny_llm: Path, tmp_path: Path, sig: int, want_rc: int
) -> None:
    out = tmp_path / "out"
    # Model calls of 2 rows: generations land in the journal one call at a time while the others run.
    args = ["--recipe", "demo", "--out", str(out), "--limit", "8", "--llm", str(tiny_llm), "--stages", "captions",
            *TINY_FLAGS, "--shard-size", "4", "--batch-size", "2", "--set", "llm.batches_per_call=1"]
    proc = start_build(args)
    _wait_until(lambda: (out / ".build" / "journal").exists() and _journal_lines(out) >= 1, proc,
                "generation in the journal")
    log = _interrupt(proc, sig)
    _assert_clean_interrupt(log, proc.returncode, want_rc, out)
    kept = _journal_lines(out) + len(list((out / ".build" / "captions").glob("part-*.parquet")))
    assert kept >= 1  # finished work is kept
    assert not (out / "captions").exists()
    r = run_build(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming build" in r.stderr
    assert _rows_accounted(out) == 8


def test_ctrl_c_on_a_two_process_build_ends_every_rank_in_one_line(tiny_llm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--recipe", "demo", "--out", str(out), "--limit", "8", "--llm", str(tiny_llm), "--stages", "captions",
            *TINY_FLAGS, "--shard-size", "2", "--batch-size", "2", "--set", "llm.batches_per_call=1"]
    proc = start_build(args, launcher=ACCELERATE_2)
    _wait_until(lambda: (out / ".build" / "journal").exists() and _journal_lines(out) >= 1, proc,
                "generation in the journal")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the launcher and both ranks get it
    log = _interrupt(proc, 0)
    assert proc.returncode == 130, log[-3000:]
    assert log.count(LINE) == 1 and "Traceback" not in log, log[-3000:]
    assert _lock_is_free(out)
    r = run_build(args)  # resumed by one process
    assert r.returncode == 0, r.stderr[-3000:]
    assert _rows_accounted(out) == 8


def test_server_build_interrupted_ends_in_one_line_without_traceback_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serve(median=0.3, p99=0.6) as server:
        args = [*SERVER_FLAGS, "--limit", "16", "--out", str(out), "--llm-endpoint", server.url,
                "--set", "llm.max_in_flight=4"]
        proc = start_build(args)
        _wait_until(lambda: sum(server.stats()["served"].values()) >= 5, proc, "requests served")
        log = _interrupt(proc, signal.SIGINT)
        _assert_clean_interrupt(log, proc.returncode, 130, out)
        r = run_build(args)
        assert r.returncode == 0, r.stderr[-3000:]
    assert "replayed from the journal" in r.stderr or "finished earlier" in r.stderr
    assert _rows_accounted(out) == 16


_SLOW_CLEANUP = textwrap.dedent("""
    import sys, time
    from unicorn_datasets.pipeline.interrupts import Interrupted, handle_signals, LINE
    try:
        with handle_signals():
            print("ready", flush=True)
            try:
                while True:
                    time.sleep(0.05)
            except Interrupted:
                print("cleaning up", flush=True)
                time.sleep(600)  # a cleanup that never ends
    except Interrupted as e:
        print(LINE, file=sys.stderr)
        sys.exit(e.exit_code)
""")


def _start_script(grace: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNICORN_INTERRUPT_GRACE_S": str(grace)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLEANUP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_second_ctrl_c_exits_at_once() -> None:
    proc = _start_script(grace=600)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "cleaning up"
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)  # the cleanup alone would take 600 s
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip() == LINE


def test_a_cleanup_that_hangs_is_ended_after_the_grace_time() -> None:
    proc = _start_script(grace=1)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip() == LINE
