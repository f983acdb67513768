"""The Synth²-style diversity/balance report: k-means balance numbers, text statistics, accounting."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicorn_datasets.analysis.clustering import balance_stats, default_k, kmeans
from unicorn_datasets.analysis.report import report, text_stats

D = 32


def _folder(root: Path, counts: list[int], *, seed: int = 0, with_embeddings: bool = True,
            captions: list[str] | None = None) -> Path:
    """pretrain rows drawn around len(counts) well-separated centres, counts[i] rows at centre i."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(counts), D)) * 10.0
    blobs = [c + 0.5 * rng.standard_normal((m, D)) for c, m in zip(centres, counts, strict=True)]
    emb = np.concatenate(blobs)
    n = len(emb)
    caps = captions or [f"caption number {i} of the set" for i in range(n)]
    ids = [f"r{i}" for i in range(n)]
    out = root / "OUT"
    for d in ("captions", "pretrain", "instruct", "artifacts"):
        (out / d).mkdir(parents=True, exist_ok=True)
    sources = ["coco"] * (n - n // 4) + ["cc3m"] * (n // 4)
    pq.write_table(pa.table({"id": ids, "seed": ids, "source": sources, "caption": caps}),
                   out / "captions" / "train-00000-of-00001.parquet")
    cols: dict[str, object] = {"id": ids, "caption": caps}
    if with_embeddings:
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).ravel()), D)
    pre = pa.table(cols)
    half = n // 2  # two shards, so reading across files is exercised
    pq.write_table(pre.slice(0, half), out / "pretrain" / "train-00000-of-00002.parquet")
    pq.write_table(pre.slice(half), out / "pretrain" / "train-00001-of-00002.parquet")
    pq.write_table(pa.table({"id": ids[:6], "task": ["mc", "qa", "qa", "reasoning", "qa", "mc"]}),
                   out / "instruct" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"stage": ["captions", "captions", "captions", "instruct"],
                             "id": ["x1", "x2", "x3", "x4"],
                             "reason": ["too_short", "bad_json", "too_short", "bad_json"]}),
                   out / "artifacts" / "rejections.parquet")
    return out


def test_balanced_clusters_give_top5_near_half_and_high_entropy(tmp_path: Path) -> None:
    out = _folder(tmp_path, [60] * 10)
    r = report(out, k=10, embeddings="stored")
    c = r["clustering"]
    assert c["embeddings"] == "pretrain.embedding" and c["rows_clustered"] == 600 and c["dim"] == D
    assert sum(c["cluster_sizes"]) == 600 and len(c["cluster_sizes"]) == 10
    assert r["top5_share"] == pytest.approx(0.5, abs=0.03)
    assert r["entropy_normalised"] > 0.99
    assert r["entropy"] == pytest.approx(math.log(10), abs=0.02)


def test_imbalanced_clusters_give_high_top5_and_lower_entropy(tmp_path: Path) -> None:
    balanced = report(_folder(tmp_path / "b", [60] * 10), k=10, embeddings="stored", write=False)
    out = _folder(tmp_path / "i", [480] + [13] * 9 + [3])  # one centre holds 80% of the rows
    r = report(out, k=10, embeddings="stored", write=False)
    assert r["top5_share"] > 0.8
    assert r["clustering"]["cluster_sizes"][0] >= 470
    assert r["entropy"] < balanced["entropy"] - 0.5
    assert r["entropy_normalised"] < 0.6


def test_text_statistics_are_exact() -> None:
    s = text_stats(["A cat sat on the mat.", "the the the dog", "Don't stop, don't!", ""])
    assert s["captions"] == 4
    # per caption: 6/6, 2/4, 2/3 (don't counted once, apostrophe kept); the empty caption has no TTR
    assert s["ttr_mean_per_caption"] == pytest.approx((1.0 + 0.5 + 2 / 3) / 3)
    assert s["vocabulary"] == 9 and s["tokens"] == 13
    assert s["ttr_corpus"] == pytest.approx(9 / 13)
    lw = s["length_words"]
    assert (lw["min"], lw["max"]) == (0, 6)
    assert lw["mean"] == pytest.approx(13 / 4)
    assert lw["p50"] == pytest.approx(3.5)
    assert lw["p25"] == pytest.approx(float(np.percentile([6, 4, 3, 0], 25)))


def test_report_counts_sources_tasks_rejections_and_writes_json(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # plots are optional: skipped without a word
    caps = ["a red car on a road", "two dogs", "the the the dog"] * 20
    out = _folder(tmp_path, [20, 20, 20], captions=caps)
    r = report(out)
    assert r["n_captions"] == 60
    assert r["text"]["length_words"]["max"] == 6 and r["text"]["length_words"]["min"] == 2
    assert r["text"]["ttr_mean_per_caption"] == pytest.approx((5 / 6 + 1.0 + 0.5) / 3)
    assert r["per_source"] == {"coco": 45, "cc3m": 15}
    assert r["per_task"] == {"qa": 3, "mc": 2, "reasoning": 1}
    assert r["rows"] == {"captions": 60, "pretrain": 60, "instruct": 6}
    rej = r["rejections"]
    assert rej["total"] == 4
    assert rej["by_stage"]["captions"] == {"total": 3, "by_reason": {"too_short": 2, "bad_json": 1}}
    assert rej["by_stage"]["instruct"]["by_reason"] == {"bad_json": 1}
    # no manifest: the recipe's default k (32) and hashed TF-IDF; 60 rows are too few for 32 clusters
    c = r["clustering"]
    assert r["k"] == 32 and c["clustered"] == "caption text" and c["encoder"] == "hashed"
    assert c["status"] == "not enough rows" and "60 captions for k=32" in c["why"] and "at least 64" in c["why"]
    assert r["top5_share"] is None and r["entropy"] is None  # no trivial "100% in the 5 largest" figure
    assert r["plots"] == []
    on_disk = json.loads((out / "artifacts" / "report.json").read_text())
    assert on_disk["top5_share"] is None and on_disk["synth2_reference"]["top5_share"] == 0.577
    assert not list((out / "artifacts").glob(".*tmp*"))


def test_hashed_bag_of_words_fallback_separates_topics(tmp_path: Path) -> None:
    cats = [f"a small {c} cat sleeping on a soft sofa" for c in ("grey", "black", "white", "ginger")]
    ships = [f"a large {c} ship sailing across the open sea" for c in ("red", "blue", "old", "cargo")]
    caps = (cats * 15) + (ships * 15)
    out = _folder(tmp_path, [60, 60], with_embeddings=False, captions=caps)
    r = report(out, k=2, write=False)
    assert r["clustering"]["embeddings"].startswith("hashed-tfidf")
    assert r["clustering"]["cluster_sizes"] == [60, 60]
    assert report(out, k=2, write=False)["clustering"] == r["clustering"]  # seeded: same answer
    with pytest.raises(ValueError, match="no `embedding` column"):
        report(out, embeddings="stored", write=False)


def test_max_rows_samples_for_clustering_but_text_stats_use_all(tmp_path: Path) -> None:
    out = _folder(tmp_path, [100, 100])
    r = report(out, k=2, max_rows=50, write=False)
    assert r["clustering"]["rows"] == 200 and r["clustering"]["rows_clustered"] == 50
    assert r["n_captions"] == 200
    assert sum(r["clustering"]["cluster_sizes"]) == 50


def test_kmeans_and_helpers() -> None:
    assert [default_k(n) for n in (1, 4, 8, 200, 20_000, 10**7)] == [1, 2, 2, 10, 100, 100]
    x = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]], np.float32)  # two directions (rows get normalised)
    km = kmeans(x, 2, seed=3)
    assert km.labels[0] == km.labels[1] != km.labels[2] == km.labels[3]
    assert km.inertia == pytest.approx(0.0, abs=1e-3)
    b = balance_stats(np.array([0, 0, 0, 1]), 2)
    assert b["cluster_sizes"] == [3, 1]
    assert b["entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    with pytest.raises(ValueError):
        kmeans(x, 5)


def test_card_globs_decide_which_files_count(tmp_path: Path) -> None:
    out = _folder(tmp_path, [30, 30])
    card = "---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train-*.parquet\n"
        for c in ("captions", "pretrain", "instruct")) + "---\n"
    (out / "README.md").write_text(card)
    stale = pq.read_table(out / "pretrain" / "train-00000-of-00002.parquet")
    pq.write_table(stale, out / "pretrain" / "old.parquet")  # not in the card's glob: not part of the dataset
    r = report(out, k=2, write=False)
    assert r["rows"]["pretrain"] == 60 and r["clustering"]["rows_clustered"] == 60


def test_report_draws_cluster_and_length_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = _folder(tmp_path, [20, 20, 20], captions=["a red car on a road", "two dogs", "a cat"] * 20)
    r = report(out, k=3)
    assert r["plots"] == ["artifacts/cluster_sizes.png", "artifacts/caption_lengths.png"]
    for rel in r["plots"]:
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _manifest(out: Path, k: int, encoder: str) -> None:
    (out / "artifacts" / "build_manifest.json").write_text(json.dumps({"recipe": {
        "report": {"k": k, "encoder": None}, "balance": {"encoder": None}, "transfer": {"encoder": encoder}}}))


def test_report_counts_concepts_when_captions_carry_them(tmp_path: Path) -> None:
    out = _folder(tmp_path, [30, 30])
    path = out / "captions" / "train-00000-of-00001.parquet"
    t = pq.read_table(path)
    labels = ["rose"] * 30 + ["tulip"] * 20 + ["oak"] * 5 + [None] * 5
    domains = ["flowers"] * 50 + ["trees"] * 5 + [None] * 5
    pq.write_table(t.append_column("domain", pa.array(domains)).append_column("label", pa.array(labels)), path)
    c = report(out, k=2, write=False)["concepts"]
    assert c["label"]["counts"] == {"rose": 30, "tulip": 20, "oak": 5} and c["label"]["unlabelled"] == 5
    assert c["label"]["top5_share"] == 1.0 and c["label"]["concepts"] == 3
    p = np.array([30, 20, 5]) / 55
    assert c["label"]["entropy_normalised"] == pytest.approx(-(p * np.log(p)).sum() / math.log(3))
    assert c["domain"]["counts"] == {"flowers": 50, "trees": 5}
    plain = report(_folder(tmp_path / "plain", [30, 30]), k=2, write=False)["concepts"]
    assert "no domain or label column" in plain["why"]


def test_report_a_b_compares_two_builds_on_one_k_and_encoder(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from unicorn_datasets.cli import main

    small = _folder(tmp_path / "small", [10, 10], captions=[f"a red car number {i}" for i in range(20)])
    big = _folder(tmp_path / "big", [30] * 4, captions=[f"{w} thing {i}" for w in ("cat", "ship", "tree", "car")
                                                         for i in range(30)])
    _manifest(small, 8, "hashed")
    _manifest(big, 10, "hashed")  # built with another k: measured with the first build's
    assert main(["report", str(small), str(big)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["k"] == 8 and r["encoder"].startswith("hashed-tfidf") and r["clustered"] == "caption text"
    assert r["a"]["n_captions"] == 20 and r["b"]["n_captions"] == 120 and "report.k=10" in r["note"]
    assert r["b_minus_a"]["top5_share"] == pytest.approx(r["b"]["top5_share"] - r["a"]["top5_share"])
    assert main(["report", str(small), str(big), "--k", "16"]) == 0  # 20 rows are too few for 16 clusters
    r = json.loads(capsys.readouterr().out)
    assert r["a"]["status"] == "not enough rows" and r["b"]["status"] == "ok" and "top5_share" not in r["b_minus_a"]
    assert main(["report", str(small), str(big), str(big)]) == 4
    assert "one build folder, or two to compare" in capsys.readouterr().err


def test_two_builds_of_different_sizes_report_diversity_alike_and_the_card_says_so(tiny_llm: Path,
                                                                                 tmp_path: Path) -> None:
    from conftest import TINY_FLAGS, run_build

    from unicorn_datasets.analysis.compare import compare_builds

    outs = {n: tmp_path / f"b{n}" for n in (8, 24)}
    for n, out in outs.items():
        r = run_build(["--recipe", "demo", "--out", str(out), "--limit", str(n), "--llm", str(tiny_llm),
                       "--stages", "captions", *TINY_FLAGS, "--set", "report.k=2"])
        assert r.returncode == 0, r.stderr[-3000:]
        rep = json.loads((out / "artifacts" / "report.json").read_text())
        c = rep["clustering"]
        assert c["clustered"] == "caption text" and c["embeddings"] == "minilm" and rep["k"] == 2
        assert c["rows_clustered"] == rep["n_captions"] > 0 and c["settings_from"] == "the build's recipe"
        card = (out / "README.md").read_text()
        assert f"the caption text of {rep['n_captions']} captions, embedded with `minilm`, in k=2 k-means" in card
        if rep["n_captions"] < 4:  # the tiny model keeps 3 of 8: too few for 2 clusters, and the card says so
            assert c["status"] == "not enough rows" and rep["top5_share"] is None and "not enough rows" in card
            assert f"diversity: not enough rows ({rep['n_captions']} captions for k=2" in r.stderr
        else:
            assert c["status"] == "ok" and sum(c["cluster_sizes"]) == rep["n_captions"]
            assert rep["top5_share"] is None and "k=2" in c["top5_why"]  # 5 of 2 clusters: no figure
            assert "diversity of the caption text (minilm): k=2 clusters" in r.stderr
            assert "(`report.k`, the same for every build, so builds compare)" in card
    both = compare_builds(outs[8], outs[24])
    assert both["k"] == 2 and both["encoder"] == "minilm" and both["clustered"] == "caption text"
    assert "note" not in both and both["a"]["n_captions"] < both["b"]["n_captions"]
    assert both["b"]["status"] == "ok"  # 24 seeds give enough captions for a figure
