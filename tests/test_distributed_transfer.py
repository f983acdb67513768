"""Stage 3 exactness and multi-process builds (accelerate launch --multi_gpu on CPU = a gloo group)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLAGS, kill_after_parts, run_build, start_build
from datasets import load_dataset

from unicorn_datasets.encoders import load_encoder

ACCELERATE_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def args_for(out: Path, tiny_llm: Path, limit: int = 8) -> list[str]:
    return ["--recipe", "demo", "--out", str(out), "--limit", str(limit), "--llm", str(tiny_llm),
            "--stages", "captions,pretrain", *TINY_FLAGS, "--shard-size", "2", "--embedding-dtype", "float32"]


def table(out: Path, config: str) -> dict[str, dict]:
    ds = load_dataset(str(out), config, split="train")
    return {r["id"]: r for r in ds}


@pytest.fixture(scope="module")
def single(tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    r = run_build(args_for(out, tiny_llm))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_stored_mean_and_vectors_match_an_independent_recomputation(single: Path) -> None:
    caps = load_dataset(str(single), "captions", split="train")
    enc = load_encoder("minilm")
    text = enc.encode_text(caps["caption"]).astype(np.float64)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    mean = np.load(single / "artifacts" / "text_mean.npy")
    assert mean.dtype == np.float64 and mean.shape == (384,)
    np.testing.assert_allclose(mean, text.mean(axis=0), atol=1e-5)
    pre = table(single, "pretrain")
    for rid, t in zip(caps["id"], text):
        np.testing.assert_allclose(np.asarray(pre[rid]["embedding"]), t - mean, atol=1e-5)  # mean-shift, no renorm
        conv = pre[rid]["conversations"]
        assert conv[0]["from"] == "human" and conv[0]["value"].startswith("<image>\n")
        assert conv[1] == {"from": "gpt", "value": pre[rid]["caption"]}
    info = (single / "artifacts" / "transfer.json").read_text()
    assert '"method": "mean-shift"' in info and f'"count": {len(caps)}' in info


def same_dataset(a: Path, b: Path) -> None:
    """Same ids, same caption text, same mean and vectors (float32 storage, 1e-5)."""
    ca, cb = table(a, "captions"), table(b, "captions")
    assert set(ca) == set(cb)
    assert all(ca[i]["caption"] == cb[i]["caption"] for i in ca)
    np.testing.assert_allclose(np.load(a / "artifacts" / "text_mean.npy"), np.load(b / "artifacts" / "text_mean.npy"),
                               atol=1e-5)
    pa_, pb = table(a, "pretrain"), table(b, "pretrain")
    assert set(pa_) == set(pb) == set(ca)
    for i in pa_:
        np.testing.assert_allclose(np.asarray(pa_[i]["embedding"]), np.asarray(pb[i]["embedding"]), atol=1e-5)


def test_two_processes_give_the_same_dataset_and_both_ranks_work(single: Path, tiny_llm: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    r = run_build(args_for(out, tiny_llm), launcher=ACCELERATE_2)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "[unicorn rank 1] captions: shard" in r.stderr and "[unicorn rank 0] captions: shard" in r.stderr
    same_dataset(single, out)


def test_killed_under_two_processes_resumes_under_one(single: Path, tiny_llm: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    # one row in flight per rank, so parts land one after another (and rows must not depend on batching)
    args = [*args_for(out, tiny_llm), "--batch-size", "1", "--set", "llm.batches_per_call=1"]
    done = len(kill_after_parts(start_build(args, launcher=ACCELERATE_2), out / ".build" / "captions", 2))
    assert 2 <= done < 4
    r = run_build(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{done} finished earlier (skipped)" in r.stderr, r.stderr[-3000:]
    same_dataset(single, out)
    ids = load_dataset(str(out), "pretrain", split="train")["id"]
    assert len(ids) == len(set(ids))


def test_a_dying_rank_takes_the_launch_down(tiny_llm: Path, tmp_path: Path) -> None:
    out = tmp_path / "dies"
    args = args_for(out, tiny_llm) + ["--set", "captions.sampling.max_new_tokens=200"]
    proc = start_build(args, launcher=ACCELERATE_2)
    deadline = time.time() + 300
    victim = None
    while time.time() < deadline and victim is None:
        out_pids = os.popen(f"pgrep -f 'build.py --recipe demo --out {out}' -P {proc.pid}").read().split()
        for pid in out_pids:
            env = Path(f"/proc/{pid}/environ").read_bytes() if Path(f"/proc/{pid}/environ").exists() else b""
            if b"LOCAL_RANK=1" in env:
                victim = int(pid)
        time.sleep(0.2)
    assert victim, "rank 1 never started"
    time.sleep(3)
    os.kill(victim, signal.SIGKILL)
    try:
        output, _ = proc.communicate(timeout=120)  # no hang: the launcher tears the group down
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "rank" in output.lower() or "failed" in output.lower()
    shutil.rmtree(out, ignore_errors=True)
