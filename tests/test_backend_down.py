"""A server that dies mid-build is given up on after one cool-down and one failed probe: one line naming each
endpoint once and saying how to resume; the same command resumes once the server is back."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import kill_tree, run_build, start_build

from unicorn_datasets.testing.fake_openai_server import serve

ARGS = ["--recipe", "demo", "--llm", "fake-model", "--prompt-mode", "chat", "--stages", "captions",
        "--set", "llm.timeout=5", "--set", "captions.min_words=20", "--shard-size", "4", "--limit", "24",
        "--set", "llm.max_in_flight=4"]


def test_a_server_that_dies_mid_build_ends_it_in_one_line_and_the_rerun_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNICORN_ENDPOINT_COOLDOWN_S", "1")  # the documented default is 10 s
    out = tmp_path / "out"
    with serve(median=0.2, p99=0.4) as server:
        args = [*ARGS, "--out", str(out), "--llm-endpoint", server.url]
        proc = start_build(args)
        deadline = time.time() + 300
        parts = out / ".build" / "captions"
        while not list(parts.glob("part-*.parquet")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        server.configure(down="refuse")
        try:
            log, _ = proc.communicate(timeout=300)  # a hang fails the test; no timing is asserted
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            raise
        assert proc.returncode != 0, log[-3000:]
        errors = [ln for ln in log.splitlines() if ln.startswith("unicorn: error:")]
        assert len(errors) == 1, log[-3000:]
        assert errors[0].count(server.url) == 1 and "after a 1 s cool-down" in errors[0]
        assert errors[0].endswith("rerun the same command to resume") and "Traceback" not in log
        server.configure(down="")
        r = run_build(args)
        assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"this rank has 6: [1-5] finished earlier", r.stderr), r.stderr[-3000:]  # parts were kept
    published = sum(pq.read_metadata(f).num_rows for f in (out / "captions").glob("*.parquet"))
    rejections = pq.read_table(out / "artifacts" / "rejections.parquet").to_pylist()
    assert published + sum(row["stage"] == "captions" for row in rejections) == 24
