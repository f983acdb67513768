"""Whole builds against the fake OpenAI-compatible server: injected faults, a server that is down, kill -9 + rerun."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import kill_tree, run_build, start_build
from datasets import load_dataset

from unicorn_datasets.testing.fake_openai_server import serve

# Chat prompts against the fake server; loose word bounds; small shards so parts land throughout.
SERVER_FLAGS = ["--recipe", "demo", "--llm", "fake-model", "--prompt-mode", "chat", "--shard-size", "8",
                "--set", "llm.timeout=2", "--set", "llm.max_retries=8", "--set", "llm.max_in_flight=16",
                "--set", "captions.min_words=20", "--set", "captions.max_attempts=3",
                "--set", "instruct.max_attempts=3"]
FAULTS = {"error_500": 0.04, "error_503": 0.04, "error_429": 0.04, "reset": 0.03, "hang": 0.01, "bad_body": 0.02,
          "empty": 0.02, "retry_after": 0.1}


def rows_by_id(out: Path, config: str) -> dict[str, dict]:
    return {r["id"]: r for r in load_dataset(str(out), config, split="train").to_list()}


def rejections(out: Path) -> list[dict]:
    return pq.read_table(out / "artifacts" / "rejections.parquet").to_pylist()


def test_faults_leave_every_row_accounted_for_and_the_same(tmp_path: Path) -> None:
    args = [*SERVER_FLAGS, "--limit", "40", "--stages", "captions,instruct"]
    with serve(median=0.02, p99=0.2, invalid=0.1) as clean_server:
        clean = tmp_path / "clean"
        r = run_build([*args, "--out", str(clean), "--llm-endpoint", clean_server.url])
        assert r.returncode == 0, r.stderr[-3000:]
        # one health check per generation stage: the preflight's stands for the first (not asked twice)
        assert clean_server.stats()["one_token"] == 2
    with serve(median=0.02, p99=0.2, invalid=0.1, **FAULTS) as server:
        out = tmp_path / "faulty"
        r = run_build([*args, "--out", str(out), "--llm-endpoint", server.url])
        assert r.returncode == 0, r.stderr[-3000:]
        failed = server.stats()["failed"]
        assert sum(failed.values()) > 0, failed  # faults did happen
        empties = failed.get("empty", 0)
    rej = rejections(out)
    for stage, config in (("captions", "captions"), ("instruct", "instruct")):
        got = rows_by_id(out, config)
        stage_rej = [r for r in rej if r["stage"] == stage]
        assert len({r["id"] for r in stage_rej}) == len(stage_rej) and not set(got) & {r["id"] for r in stage_rej}
        assert all(r["reason"] for r in stage_rej)
        want = rows_by_id(clean, config)
        gave_up = {r["id"] for r in stage_rej if r["reason"] == "server_error"}
        key = "caption" if config == "captions" else "conversations"
        # An empty completion is a model answer that fails validation: it costs its row an attempt, and the
        # next attempt has another seed. Every other row is exactly the row of the fault-free run.
        same_attempt = [rid for rid, row in got.items() if row["attempts"] == want[rid]["attempts"]]
        assert len(got) - len(same_attempt) <= empties
        assert all(got[rid][key] == want[rid][key] for rid in same_attempt)
        assert set(want) - set(got) <= gave_up | {r["id"] for r in stage_rej}
    manifest_in = len(rows_by_id(out, "captions")) + len([r for r in rej if r["stage"] == "captions"])
    assert manifest_in == 40


def test_server_down_at_start_is_one_clear_line_and_writes_nothing(tmp_path: Path) -> None:
    with serve(median=0.01, p99=0.02, down="refuse") as server:
        out = tmp_path / "out"
        r = run_build([*SERVER_FLAGS, "--limit", "5", "--stages", "captions", "--out", str(out),
                       "--llm-endpoint", server.url])
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("unicorn: error:")]
    assert len(errors) == 1 and server.url.split("//")[1] in errors[0], r.stderr[-2000:]
    assert not out.exists()  # probed before anything is written


@pytest.mark.parametrize("kill_after", [20])
def test_kill_mid_stage_rerun_sends_only_the_missing_requests(tmp_path: Path, kill_after: int) -> None:
    window = 8
    args = [*SERVER_FLAGS, "--limit", "64", "--stages", "captions", "--shard-size", "64",
            "--set", f"llm.max_in_flight={window}"]
    with serve(median=0.15, p99=0.6) as server:
        out = tmp_path / "out"
        proc = start_build([*args, "--out", str(out), "--llm-endpoint", server.url])
        deadline = time.time() + 120
        while time.time() < deadline and sum(server.stats()["served"].values()) < kill_after:
            time.sleep(0.05)
        kill_tree(proc)
        assert not (out / ".build" / "captions" / "part-00000.parquet").exists()  # the one shard was unfinished
        r = run_build([*args, "--out", str(out), "--llm-endpoint", server.url])
        assert r.returncode == 0, r.stderr[-3000:]
        stats = server.stats()
    # requests whose identical body reached the server twice: only those in flight at the kill
    assert stats["duplicates"] <= window, stats
    assert "replayed from the journal" in r.stderr
