from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_llm  # noqa: E402

# Small, fast settings for the tiny random model: it writes word salad, so word bounds are loose.
TINY_FLAGS = [
    "--set", "captions.min_words=5", "--set", "captions.sampling.max_new_tokens=60",
    "--set", "captions.min_seed_overlap=0", "--set", "captions.min_seed_cosine=0",
    "--set", "captions.keep_truncated=true",  # the tiny model always runs to max_new_tokens
    "--set", "instruct.sampling.max_new_tokens=400", "--set", "instruct.max_chars=24",
    "--set", "instruct.items={mc: [1, 2], qa: [1, 2], reasoning: [1, 1]}", "--shard-size", "3",
    "--set", "instruct.mix={mc: 0.34, qa: 0.33, reasoning: 0.33}",
    "--set", "instruct.min_answer_support_margin=null",  # word salad supports no answer
    "--set", "instruct.item_checks=[]",  # nor is it a question, or an answer to one
]


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_datasets_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def run_build(args: list[str], *, cwd: Path | None = None, timeout: int = 600,
              launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run the real entry point in a fresh process, as a user would."""
    cmd = [*(launcher or [sys.executable]), str(ROOT / "build.py"), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def start_build(args: list[str], *, launcher: list[str] | None = None) -> subprocess.Popen:
    cmd = [*(launcher or [sys.executable]), str(ROOT / "build.py"), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process under it (torchrun puts workers in their own sessions)."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        victims = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        victims = []
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def kill_after_parts(proc: subprocess.Popen, parts: Path, n: int, timeout: float = 400) -> dict[str, int]:
    """SIGKILL the build once `n` shard parts exist in `parts`; returns {part name: mtime_ns} at the kill."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < n:
        time.sleep(0.1)
    kill_tree(proc)
    return {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
