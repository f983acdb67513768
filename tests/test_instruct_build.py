"""Stage 2 inside a real build: constrained decoding with a tiny local model, counts, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
from conftest import TINY_FLAGS, kill_after_parts, run_build, start_build
from datasets import load_dataset

LETTERS = {"A", "B", "C", "D"}


def check_instruct(out: Path) -> None:
    caps = load_dataset(str(out), "captions", split="train")
    ins = load_dataset(str(out), "instruct", split="train")
    rej = [r for r in pq.read_table(out / "artifacts" / "rejections.parquet").to_pylist() if r["stage"] == "instruct"]
    summary = (out / "README.md").read_text()
    assert "config_name: instruct" in summary
    assert set(ins["id"]) <= set(caps["id"]) and len(set(ins["id"])) == len(ins)
    manifest = json.loads((out / "artifacts" / "build_manifest.json").read_text())
    selected = manifest["stages"]["instruct"]["selected"]
    assert selected == len(caps)  # the test mix asks for every caption (fractions summing to 1)
    assert len(ins) + len(rej) == selected
    assert set(ins["task"]) <= {"mc", "qa", "reasoning"}
    for row in ins:
        conv = row["conversations"]
        assert conv[0]["from"] == "human" and conv[0]["value"].startswith("<image>\n")
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        if row["task"] == "mc":
            for human, gpt in zip(conv[::2], conv[1::2]):
                lines = human["value"].split("\n")
                assert [ln[:3] for ln in lines[-4:]] == ["A. ", "B. ", "C. ", "D. "]
                assert gpt["value"] in LETTERS
        assert len(row["embedding"]) == 384


def test_demo_build_with_all_stages_reconciles(tiny_llm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run_build(["--recipe", "demo", "--out", str(out), "--limit", "24", "--llm", str(tiny_llm), *TINY_FLAGS])
    assert r.returncode == 0, r.stderr[-3000:]
    check_instruct(out)
    assert len(load_dataset(str(out), "instruct", split="train")) > 0


def test_sigkill_during_stage2_resumes(tiny_llm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--recipe", "demo", "--out", str(out), "--limit", "30", "--llm", str(tiny_llm), *TINY_FLAGS,
            "--shard-size", "1", "--set", "instruct.max_chars=60"]
    parts = out / ".build" / "instruct"
    finished = kill_after_parts(start_build(args), parts, 1)
    assert finished and not (parts / "COMPLETE").exists()
    r = run_build(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "captions: complete in an earlier run (skipped)" in r.stderr
    assert f"{len(finished)} finished earlier (skipped)" in r.stderr
    for name, mtime in finished.items():
        assert (parts / name).stat().st_mtime_ns == mtime
    check_instruct(out)


def test_task_without_rows_gets_topup_captions_or_a_clear_warning(tiny_llm: Path, tmp_path: Path) -> None:
    # an impossible answer-support margin rejects every mc row, round after round: the build must spend
    # the top-up budget on captions no task used, then say that mc stayed empty
    out = tmp_path / "out"
    args = ["--recipe", "demo", "--out", str(out), "--limit", "12", "--llm", str(tiny_llm), *TINY_FLAGS,
            "--stages", "captions,instruct", "--set", "instruct.mix={mc: 1, qa: 1}", "--set", "instruct.topup_budget=3",
            "--set", "instruct.min_answer_support_margin=5.0"]
    r = run_build(args)
    build = out / ".build"
    captions = [row for p in sorted((build / "captions").glob("part-*.parquet"))
                for row in pq.read_table(p, columns=["reject_reason"]).to_pylist() if row["reject_reason"] is None]
    assert len(captions) > 2, "the tiny model's captions must leave an unused pool for this test"
    rounds = re.findall(r"instruct: top-up round (\d+): (\d+) caption\(s\) for \[([^]]*)\]", r.stderr)
    assert rounds and "'mc'" in rounds[0][2], r.stderr[-3000:]
    topped = sum(int(n) for _, n, _ in rounds)
    assert topped == min(3, len(captions) - 2)  # the budget, or the captions no task used
    assert re.search(r"WARNING instruct: requested task\(s\) \[[^]]*'mc'[^]]*\] have no accepted row", r.stderr)
    rows = [row for p in sorted((build / "instruct").glob("part-*.parquet"))
            for row in pq.read_table(p, columns=["id", "task", "reject_reason"]).to_pylist()]
    assert len(rows) == 2 + topped and len({row["id"] for row in rows}) == len(rows)  # top-ups were unused
    mc = [row for row in rows if row["task"] == "mc"]
    assert len(mc) > 1 and all(row["reject_reason"] is not None for row in mc)
    if r.returncode == 0:  # qa rows survived: the manifest keeps the warning
        manifest = json.loads((out / "artifacts" / "build_manifest.json").read_text())
        assert "mc" in manifest["stages"]["instruct"]["warnings"][0]
