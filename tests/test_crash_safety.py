"""Crash safety proven: SIGKILL a whole build at random moments in every stage (final assembly and
card writing included), rerun at once each time, and get exactly the dataset of an uninterrupted
build with the same seed; and a 2-process build killed and finished by 1 process.

The kill moments come from a seeded RNG over the measured timeline of an uninterrupted build: for
each phase (captions, instruct, encode, pretrain + assembly + card) an offset inside that phase's
measured window, applied from the moment the rerun enters the same phase (a rerun skips finished
work, so its phases start earlier than in the first run)."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY_FLAGS, kill_tree, run_build, start_build

ACCELERATE_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
PHASES = ("captions", "instruct", "encode", "pretrain")  # each starts with "<stage>: N shards in all"
RNG_SEED = 20261122


def _args(out: Path, tiny_llm: Path) -> list[str]:
    # 6 seeds with the tiny model and this seed: 3 caption shards, some captions and instructions accepted
    return ["--recipe", "demo", "--out", str(out), "--limit", "6", "--llm", str(tiny_llm), *TINY_FLAGS,
            "--shard-size", "2", "--embedding-dtype", "float32"]


class Watched:
    """A build process whose output lines are timestamped as they arrive."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.t0, self.lines = proc, time.monotonic(), queue.Queue()
        self.seen: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put((time.monotonic() - self.t0, line))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 300) -> float | None:
        """Seconds since start at which a line matching `pattern` arrived; None if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if item is None:
                self.lines.put(None)
                return None
            self.seen.append(item)
            if re.search(pattern, item[1]):
                return item[0]
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s")

    def finish(self, timeout: float = 300) -> float:
        self.wait_for(r"(?!)", timeout)
        self.proc.wait(timeout=30)
        return time.monotonic() - self.t0


def _phase_marker(phase: str) -> str:
    return rf"\[unicorn rank 0\] {phase}: \d+ shards in all"


def _configs(out: Path) -> dict[str, list[dict]]:
    """Every published config, rows sorted by id; plus the rejections and the text mean."""
    found = {}
    for d in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "artifacts"):
        rows = [r for f in sorted(d.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
        found[d.name] = sorted(rows, key=lambda r: r["id"])
    rej = pq.read_table(out / "artifacts" / "rejections.parquet").to_pylist()
    found["rejections"] = sorted(rej, key=lambda r: (r["stage"], r["id"]))
    found["text_mean"] = [{"v": np.load(out / "artifacts" / "text_mean.npy").tolist()}]
    return found


def _published_files(out: Path) -> set[str]:
    """What would be pushed: everything outside the work area (no stray temporary files)."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if ".build" not in p.relative_to(out).parts}


@pytest.fixture(scope="module")
def reference(tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[float, float]]]:
    """An uninterrupted build, and the measured [start, end] second window of each phase."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run = Watched(start_build(_args(out, tiny_llm)))
    starts = {phase: run.wait_for(_phase_marker(phase)) for phase in PHASES}
    last_shard = run.wait_for(r"\[unicorn rank 0\] pretrain: shard \d+ done")
    end = run.finish()
    assert run.proc.returncode == 0, "".join(line for _, line in run.seen)[-3000:]
    assert None not in starts.values() and last_shard is not None
    windows = {  # offsets from the phase's own start marker
        "captions": (0.0, starts["instruct"]),
        "instruct": (0.0, starts["encode"] - starts["instruct"]),
        "encode": (0.0, last_shard - starts["encode"]),  # encode and transfer: both short, one phase
        "assembly_and_card": (last_shard - starts["pretrain"], end - starts["pretrain"]),
    }
    return out, windows


def test_sigkill_at_random_moments_in_every_stage_then_rerun_gives_the_same_dataset(
    reference: tuple[Path, dict[str, tuple[float, float]]], tiny_llm: Path, tmp_path: Path
) -> None:
    ref_out, windows = reference
    rng = np.random.default_rng(RNG_SEED)
    plan = [(phase, float(rng.uniform(*windows[phase]))) for phase in ("captions", "instruct", "encode")]
    plan.append(("pretrain", float(rng.uniform(*windows["assembly_and_card"]))))  # after its last shard
    out = tmp_path / "out"
    killed = []
    for phase, offset in plan:
        run = Watched(start_build(_args(out, tiny_llm)))
        at = run.wait_for(_phase_marker(phase))
        if at is not None:
            time.sleep(max(0.0, at + offset - (time.monotonic() - run.t0)))
        if run.proc.poll() is None:
            kill_tree(run.proc)  # the whole tree, SIGKILL: no handler, no cleanup
            killed.append(f"{phase}+{offset:.1f}s")
        else:
            run.finish()
        log = "".join(line for _, line in run.seen)
        assert "another build is writing" not in log, log[-2000:]  # a rerun is never refused by a dead holder
    final = run_build(_args(out, tiny_llm))
    assert final.returncode == 0, final.stderr[-3000:]
    print(f"killed at: {', '.join(killed)}")
    assert len(killed) >= 3, f"too few kills landed ({killed}): the plan no longer covers the build"
    assert _configs(out) == _configs(ref_out)
    assert _published_files(out) == _published_files(ref_out)
    assert (out / "README.md").read_text() == (ref_out / "README.md").read_text()


def test_two_process_build_killed_then_finished_by_one(
    reference: tuple[Path, dict[str, tuple[float, float]]], tiny_llm: Path, tmp_path: Path
) -> None:
    ref_out, windows = reference
    out = tmp_path / "two"
    offset = float(np.random.default_rng(RNG_SEED + 1).uniform(0.0, windows["captions"][1]))
    run = Watched(start_build(_args(out, tiny_llm), launcher=ACCELERATE_2))
    assert run.wait_for(r"\[unicorn rank 1\] captions: \d+ shards in all") is not None  # both ranks at work
    time.sleep(offset)
    kill_tree(run.proc)
    r = run_build(_args(out, tiny_llm))
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = _configs(out), _configs(ref_out)
    assert got.keys() == want.keys()
    for name in got:  # same rows and text; vectors equal up to float32 summation order across ranks
        assert [{k: v for k, v in r.items() if k != "embedding"} for r in got[name]] == \
               [{k: v for k, v in r.items() if k != "embedding"} for r in want[name]], name
        for a, b in zip(got[name], want[name], strict=True):
            if "embedding" in a:
                np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)
    assert _published_files(out) == _published_files(ref_out)
