"""The wheel works on its own: built from the sources, installed into a fresh venv outside the checkout, it
builds the demo recipe (packaged recipe, card template, prompts, seeds), loads and exports the result.

A package file left out of the wheel fails here. The fresh venv borrows this environment's installed
dependencies (torch, datasets, ...) through a .pth line, so nothing is downloaded; a plain path line
does not run the checkout's editable finder, so `unicorn_datasets` can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ROOT, TINY_FLAGS

pytestmark = pytest.mark.wheel

SOURCES = ("pyproject.toml", "setup.py", "README.md", "unicorn_datasets", "builders", "cards")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd[:3]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def _build_wheel(tmp: Path) -> Path:
    """`pip wheel` on a copy of the sources (no stale build/ folder, nothing written into the checkout)."""
    src = tmp / "src"
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(p, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", src],
         tmp, os.environ.copy())
    (wheel,) = (tmp / "dist").glob("unicorn_datasets-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch etc., no download
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel], tmp, env)
    return venv


def test_wheel_ships_recipes_and_card_and_builds_the_demo_from_outside_the_checkout(
    tiny_llm: Path, tmp_path: Path
) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [*(ROOT / "builders").glob("*.yaml"), *(ROOT / "cards").glob("*.md")]
    assert len(shipped) >= 4
    assert {f"unicorn_datasets/{p.relative_to(ROOT).as_posix()}" for p in shipped} <= names
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "unicorn_datasets").rglob("__init__.py")}
    assert {p for p in packages if f"{p}/__init__.py" not in names} == set()

    venv = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run([venv / "bin" / "python", "-c", "import unicorn_datasets; print(unicorn_datasets.__file__)"],
                 work, env).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where

    version = _run([venv / "bin" / "unicorn", "--version"], work, env).stdout.strip()
    assert version == f"unicorn {metadata.version('unicorn-datasets')}"

    out = work / "unicorn"
    _run([venv / "bin" / "unicorn", "build", "--recipe", "demo", "--out", "unicorn", "--limit", "6",
          "--llm", tiny_llm, "--stages", "captions,pretrain", *TINY_FLAGS], work, env, timeout=600)
    manifest = json.loads((out / "artifacts" / "build_manifest.json").read_text())
    assert manifest["code_version"] == metadata.version("unicorn-datasets")
    assert manifest["recipe"]["name"] == "demo"
    assert "config_name: pretrain" in (out / "README.md").read_text()

    load = ("from datasets import load_dataset; ds = load_dataset('unicorn', 'pretrain', split='train'); "
            "print(len(ds), len(ds[0]['embedding']))")
    n, dim = map(int, _run([venv / "bin" / "python", "-c", load], work, env).stdout.split())
    assert n >= 1 and dim == 384

    _run([venv / "bin" / "unicorn", "export", "unicorn", "--to", "bunny", "--allow-dim-mismatch"], work, env)
    assert any((work / "bunny").iterdir())
