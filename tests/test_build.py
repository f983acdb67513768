"""End-to-end builds with a tiny local LLM: rows, columns, counts, resume, refusals, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import TINY_FLAGS, kill_after_parts, run_build, start_build
from datasets import load_dataset

from unicorn_datasets.pipeline.loop import collect_seeds
from unicorn_datasets.recipe import load_recipe


def seed_ids(limit: int) -> set[str]:
    return {s.id for s in collect_seeds(load_recipe("demo", {"limit": limit}))[0]}


def rejected(out: Path, stage: str) -> dict[str, str]:
    t = pq.read_table(out / "artifacts" / "rejections.parquet").to_pylist()
    return {r["id"]: r["reason"] for r in t if r["stage"] == stage}


def test_captions_build_loads_and_accounts_for_every_seed(tiny_llm: Path, tmp_path: Path) -> None:
    out = tmp_path / "unicorn"
    r = run_build(["--recipe", "demo", "--out", str(out), "--limit", "9", "--llm", str(tiny_llm),
                   "--stages", "captions", *TINY_FLAGS])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "build summary" in r.stderr and "captions" in r.stderr
    ds = load_dataset(str(out), "captions", split="train")
    assert {"id", "seed", "source", "caption"} <= set(ds.column_names)
    assert len(set(ds["id"])) == len(ds)
    rej = rejected(out, "captions")
    assert set(ds["id"]) | set(rej) == seed_ids(9) and not set(ds["id"]) & set(rej)
    assert all(5 <= len(c.split()) <= 483 for c in ds["caption"])
    # the folder name works as a dataset name from its parent, as on the Hub
    os.chdir(tmp_path)
    assert len(load_dataset("unicorn", "captions", split="train")) == len(ds)
    card = (out / "README.md").read_text()
    assert "config_name: captions" in card and "Rejections" in card
    manifest = json.loads((out / "artifacts" / "build_manifest.json").read_text())
    assert manifest["provenance"]["captions"]["prompt_sha"]


def test_sigkill_then_rerun_resumes_without_regenerating(tiny_llm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--recipe", "demo", "--out", str(out), "--limit", "12", "--llm", str(tiny_llm), "--stages", "captions",
            *TINY_FLAGS, "--shard-size", "2", "--set", "captions.sampling.max_new_tokens=120"]
    parts = out / ".build" / "captions"
    finished = kill_after_parts(start_build(args), parts, 2)
    assert 2 <= len(finished) < 6, "kill should land mid-stage"
    assert not (out / "README.md").exists()

    r = run_build(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{len(finished)} finished earlier (skipped)" in r.stderr
    for name, mtime in finished.items():  # finished shards were not rewritten
        assert (parts / name).stat().st_mtime_ns == mtime
    ds = load_dataset(str(out), "captions", split="train")
    ids = ds["id"]
    assert len(ids) == len(set(ids))
    assert set(ids) == seed_ids(12) - set(rejected(out, "captions"))


def test_other_settings_into_same_out_are_refused_unless_overwrite(tiny_llm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["--recipe", "demo", "--out", str(out), "--limit", "8", "--llm", str(tiny_llm), "--stages", "captions",
            *TINY_FLAGS]
    assert run_build(base).returncode == 0
    r = run_build([*base, "--seed", "7"])
    assert r.returncode != 0 and "--overwrite" in r.stderr and "seed" in r.stderr
    r = run_build([*base, "--seed", "7", "--overwrite"])
    assert r.returncode == 0, r.stderr[-2000:]


def test_second_build_into_same_out_is_refused(tiny_llm: Path, tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "out"
    (out / ".build").mkdir(parents=True)
    with open(out / ".build" / "lock", "a+") as held:  # a running build holds this lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run_build(["--recipe", "demo", "--out", str(out), "--limit", "2", "--llm", str(tiny_llm), *TINY_FLAGS])
    assert r.returncode != 0 and "another build is writing" in r.stderr


@pytest.mark.parametrize(
    "name, content, column, expect",
    [
        ("missing.txt", None, None, "seed file not found"),
        ("empty.txt", b"\n\n  \n", None, "no usable seeds"),
        ("latin1.txt", b"A dog on a beach.\nA caf\xe9 with tables outside.\n", None, "latin1.txt:2:6: not UTF-8"),
        ("big.txt", b"A cat on a mat.\n" + b"x" * (1024 * 1024) + b"\n", None, "big.txt:2: line is 1,048,576 bytes"),
        ("seeds.jsonl", b'{"text": "A red car parked on a street."}\n', "caption", "no column 'caption'"),
        ("seeds.csv", b"id,text\n1,A red car parked on a street.\n", "caption", "no column 'caption'"),
    ],
)
def test_bad_seed_input_fails_clearly_and_writes_nothing(tmp_path: Path, name, content, column, expect) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    args = ["--recipe", "demo", "--out", str(out), "--seeds", str(path), "--llm", "/nonexistent"]
    if column:
        args += ["--seed-column", column]
    r = run_build(args)
    assert r.returncode == 3
    assert expect in r.stderr, r.stderr[-2000:]
    assert not out.exists()


def test_every_row_rejected_is_a_clear_failure_with_the_rejections_kept(tiny_llm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run_build(["--recipe", "demo", "--out", str(out), "--limit", "3", "--llm", str(tiny_llm),
                   "--stages", "captions", *TINY_FLAGS, "--set", "captions.min_words=400",
                   "--set", "captions.max_attempts=2"])
    assert r.returncode == 4
    assert "captions: every row was rejected" in r.stderr and "build summary" in r.stderr
    assert len(rejected(out, "captions")) == 3
    for row in pq.read_table(out / "artifacts" / "rejections.parquet").to_pylist():  # every attempt's reason kept
        assert row["attempts"] == len(row["attempt_reasons"]) == 2 and row["attempt_reasons"][-1] == row["reason"]
    assert "(100.0%)" in r.stderr  # the rate beside the count
    assert not (out / "captions").exists() and "config_name: captions" not in (out / "README.md").read_text()


def test_sigkill_mid_shard_replays_the_journal_and_gives_the_same_rows(tiny_llm: Path, tmp_path: Path) -> None:
    """One big shard: without the journal a kill would throw every finished generation of it away."""
    import time

    args = ["--recipe", "demo", "--limit", "10", "--llm", str(tiny_llm), "--stages", "captions", *TINY_FLAGS,
            "--shard-size", "10", "--batch-size", "1", "--set", "llm.batches_per_call=1"]
    clean = tmp_path / "clean"
    assert run_build([*args, "--out", str(clean)]).returncode == 0

    out = tmp_path / "out"
    proc = start_build([*args, "--out", str(out)])
    journal = out / ".build" / "journal" / "captions" / "unit-00000.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not journal.exists() or journal.read_text().count("\n") < 3):
        time.sleep(0.05)
    from conftest import kill_tree

    kill_tree(proc)
    journaled = journal.read_text().count("\n")
    assert journaled >= 3 and not (out / ".build" / "captions" / "part-00000.parquet").exists()

    r = run_build([*args, "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / ".build" / "captions" / "part-00000.json").read_text())
    clean_meta = json.loads((clean / ".build" / "captions" / "part-00000.json").read_text())
    assert meta["replayed"] >= journaled and meta["requests"] + meta["replayed"] == clean_meta["requests"]
    a = load_dataset(str(out), "captions", split="train").to_list()
    b = load_dataset(str(clean), "captions", split="train").to_list()
    assert a == b
