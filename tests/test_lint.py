"""The code base stays ruff-clean (the same check a contributor runs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in the test extras")
def test_ruff_clean() -> None:
    r = subprocess.run(["ruff", "check", "unicorn_datasets", "tests", "bench", "build.py"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
