"""The recipe's seed mix survives --seeds; caption sources as datasets (groups, list columns); `unicorn seeds`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_build
from datasets import load_dataset

from unicorn_datasets.seeds.sources import read_caption_seeds
from unicorn_datasets.testing.fake_openai_server import serve

PAPER_SHARE = 107_000 / 1_243_195
SERVER = ["--llm", "fake-model", "--prompt-mode", "chat", "--stages", "captions", "--shard-size", "100",
          "--set", "captions.min_words=1", "--set", "captions.min_seed_overlap=0", "--set", "near_dup.enabled=false",
          "--set", "llm.max_in_flight=32"]
WORDS = "red blue green small large old new wooden metal bright".split()


def unicorn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unicorn_datasets.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def caption(image: int, k: int) -> str:
    return f"a {WORDS[k % 10]} {WORDS[(image + k) % 10]} object number {image} seen from side {k} in a room"


@pytest.fixture(scope="module")
def captions_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 images, 3 captions each: one caption per image leaves 400 caption seeds."""
    p = tmp_path_factory.mktemp("seeds") / "captions.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "caption"])
        for image in range(400):
            for k in range(3):
                w.writerow([f"img{image}", caption(image, k)])
    return p


@pytest.fixture(scope="module")
def sentences_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """COCO-style: one row per image with a list of sentences."""
    p = tmp_path_factory.mktemp("seeds") / "coco.parquet"
    pq.write_table(pa.table({"image_id": [f"img{i}" for i in range(40)],
                             "sentences": [[caption(i, k) for k in range(5)] for i in range(40)],
                             "image": [b"\x89PNG not read" for _ in range(40)]}), p)
    return p


def test_paper_recipe_with_own_captions_keeps_the_domain_share_and_one_caption_per_image(
        tmp_path: Path, captions_csv: Path) -> None:
    out = tmp_path / "out"
    with serve(median=0.002, p99=0.01) as server:
        r = run_build(["--recipe", "unicorn-1.2m", "--seeds", str(captions_csv), "--seed-column", "caption",
                       "--seed-group-column", "image_id", "--limit", "300", *SERVER, "--out", str(out),
                       "--llm-endpoint", server.url])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = load_dataset(str(out), "captions", split="train").to_list()
    domain_rows = [x for x in rows if x["source"].startswith("domain_")]
    assert abs(len(domain_rows) / len(rows) - PAPER_SHARE) <= 0.03, (len(domain_rows), len(rows))
    assert all(x["domain"] and x["label"] and x["label"] in x["seed"] for x in domain_rows)
    caption_rows = [x for x in rows if not x["source"].startswith("domain_")]
    assert all(x["domain"] is None and x["label"] is None for x in caption_rows)
    image_of = {caption(i, k): f"img{i}" for i in range(400) for k in range(3)}
    images = [image_of[x["seed"]] for x in caption_rows]
    assert len(images) == len(set(images)) > 200  # one caption seed per image
    manifest = json.loads((out / "artifacts" / "build_manifest.json").read_text())
    mix = {s["path"]: s for s in manifest["seeds"]["mix"]["sources"]}
    sha = mix[str(captions_csv)]["origin"]["sha256"]
    assert len(sha) == 64 and mix["builtin:domains"]["share"] == pytest.approx(PAPER_SHARE, 1e-4)
    card = (out / "README.md").read_text()
    assert sha in card and "WordNet" in card and "| domain | selected | delivered |" in card


def test_a_parquet_list_column_yields_sentences_one_per_image(tmp_path: Path, sentences_parquet: Path) -> None:
    seeds, origin = read_caption_seeds(str(sentences_parquet), column="sentences", group_column="image_id", seed=3)
    assert len(seeds) == 40 and all(not s.seed.startswith("[") and "object number" in s.seed for s in seeds)
    assert origin["sha256"]
    again, _ = read_caption_seeds(str(sentences_parquet), column="sentences", group_column="image_id", seed=3)
    assert [s.id for s in again] == [s.id for s in seeds]  # chosen by the build seed, deterministically
    every, _ = read_caption_seeds(str(sentences_parquet), column="sentences")
    assert len(every) == 200
    out = tmp_path / "out"
    with serve(median=0.002, p99=0.01) as server:
        r = run_build(["--recipe", "unicorn-1.2m", "--seeds", str(sentences_parquet), "--seed-column", "sentences",
                       "--seed-group-column", "image_id", "--limit", "40", *SERVER, "--out", str(out),
                       "--llm-endpoint", server.url])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = load_dataset(str(out), "captions", split="train").to_list()
    assert rows and all(not x["seed"].startswith("[") for x in rows)


def test_a_saved_dataset_folder_is_a_caption_source(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_dict({"text": ["a dog on a sofa", "a cat in a box"], "other": [1, 2]}).save_to_disk(tmp_path / "d")
    seeds, origin = read_caption_seeds(str(tmp_path / "d"))
    assert sorted(s.seed for s in seeds) == ["a cat in a box", "a dog on a sofa"] and origin["kind"] == "dataset folder"


def test_seeds_plan_reports_a_paper_scale_vocabulary() -> None:
    r = unicorn("seeds", "--recipe", "unicorn-1.2m", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    dom = next(s for s in plan["sources"] if s["kind"] == "domains")
    assert plan["limit"] == 1_243_195 and dom["labels"] >= 10_000 and dom["domains"] >= 10
    assert dom["min_templates_per_domain"] >= 10
    assert set(plan["sources"][0]) == {"kind", "path", "available", "selected", "share"}
    assert "above what all seed sources hold" in r.stderr  # said, before any generation


def test_seeds_keeps_the_domain_source_and_repeats(tmp_path: Path, captions_csv: Path) -> None:
    other = tmp_path / "more.txt"
    other.write_text("a red kite over a beach\na tram at night in the rain\n")
    r = unicorn("seeds", "--recipe", "unicorn-471k", "--seeds", str(captions_csv), "--seeds", str(other),
                "--limit", "200", "--json")
    assert r.returncode == 0, r.stderr
    kinds = [(s["kind"], s["path"]) for s in json.loads(r.stdout)["sources"]]
    assert kinds == [("captions", str(captions_csv)), ("captions", str(other)), ("domains", "builtin:domains")]
    r = unicorn("seeds", "--recipe", "unicorn-471k", "--set", f"seeds=[{{path: {other}}}]", "--json")
    assert [s["path"] for s in json.loads(r.stdout)["sources"]] == [str(other)]  # --set replaces everything


@pytest.mark.parametrize("args, expect", [
    (["--set", "seeds=[{path: builtin:domains, kind: domains, share: 1.5}]"], r"seeds\[0\].share.*\[0, 1\].*1.5"),
    (["--set", "seeds=[{path: builtin:domains_demo, kind: domains, share: 0.7}, {path: builtin:open_domain, "
      "share: 0.6}]"], r"shares sum to 1.3"),
    (["--seeds", "{csv}", "--seed-column", "text"], r"no column 'text' \(--seed-column; columns: image_id, caption\)"),
    (["--seeds", "{csv}", "--seed-group-column", "img"], r"no column 'img' \(--seed-group-column; columns: image_id"),
    (["--seeds", "someone/captions"], r"someone/captions: a Hub dataset id, but HF_HUB_OFFLINE is set"),
])
def test_bad_seed_input_is_one_line_and_writes_nothing(tmp_path: Path, captions_csv: Path, args: list[str],
                                                       expect: str) -> None:
    import re

    out = tmp_path / "out"
    t0 = time.monotonic()
    r = run_build(["--recipe", "demo", "--out", str(out), *[a.replace("{csv}", str(captions_csv)) for a in args]])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("unicorn: error:")]
    assert r.returncode == 3 and len(errors) == 1 and re.search(expect, errors[0]), r.stderr[-2000:]
    assert not out.exists() and time.monotonic() - t0 < 120


def test_shares_are_met_or_reported_with_numbers(tmp_path: Path) -> None:
    from unicorn_datasets.recipe import Recipe
    from unicorn_datasets.seeds.mix import plan_seeds

    few = tmp_path / "few.txt"
    few.write_text("\n".join(f"a small red thing number {i}" for i in range(5)))
    seeds = [{"path": "builtin:open_domain"}, {"path": str(few), "share": 0.25},
             {"path": "builtin:domains_demo", "kind": "domains", "share": 0.5}]
    plan = plan_seeds(Recipe.from_dict({"limit": 40, "seeds": seeds}))
    assert {s.spec.path: s.selected for s in plan.sources} == {"builtin:open_domain": 15, str(few): 5,
                                                                "builtin:domains_demo": 20}
    assert any("asks 10 seeds but it holds 5 (5 short" in n for n in plan.notes), plan.notes
    balanced = plan_seeds(Recipe.from_dict({"limit": 40, "seeds": seeds,
                                            "balance": {"enabled": True, "encoder": "hashed"}}))
    assert sum(1 for s in balanced.selection.seeds if s.domain) == 20 and len(balanced.selection.seeds) == 40
