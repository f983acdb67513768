"""Diversity and balance report on a built dataset folder (the Synth² analysis, plus accounting).

Synth² embeds captions, clusters them with k-means and compares the cluster-size distribution:
share of the 5 largest clusters (57.7% for their synthetic captions vs 69.8-83.0% for real
sets) and the entropy of cluster sizes (natural log; 3.81 for theirs). This module does the same
on OUT: it embeds the caption TEXT with the build's sentence encoder (report.encoder, balance.encoder
or transfer.encoder; hashed TF-IDF bag-of-words on request) and clusters it with seeded faiss k-means
(clustering.py) at a fixed k (report.k), so two builds compare; it adds per-concept counts (domain and
label columns), caption length and type-token statistics, per-source and per-task counts, and
rejections by stage and reason. Results go to `artifacts/report.json` (and plots when matplotlib is importable).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unicorn_datasets.analysis.clustering import (
    HASH_DIM,
    balance_report,
    balance_stats,
    hashed_tfidf,
    kmeans,
    normalise,
)
from unicorn_datasets.analysis.concepts import CONCEPT_COLUMNS, SYNTH2, concept_report
from unicorn_datasets.dataset.atomic import atomic_path, write_text
from unicorn_datasets.dataset.hub import config_files
from unicorn_datasets.dataset.layout import ARTIFACTS, MANIFEST, REJECTIONS, REPORT, SEED_CLUSTERS, artifact
from unicorn_datasets.stages import registered
from unicorn_datasets.stages.captions import NAME as CAPTIONS
from unicorn_datasets.stages.instruct.stage import NAME as INSTRUCT
from unicorn_datasets.stages.pretrain import NAME as PRETRAIN
from unicorn_datasets.text.tokens import words

# ---- reading OUT -----------------------------------------------------------------------------


def _files(folder: Path, config: str) -> list[Path]:
    return config_files(folder, config)


def _num_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _has_column(files: list[Path], column: str) -> bool:
    return bool(files) and column in pq.ParquetFile(files[0]).schema_arrow.names


def _iter_column(files: list[Path], column: str, batch_size: int = 65536) -> Iterator[pa.Array]:
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=[column]):
            yield batch.column(0)


def _sample_index(n: int, max_rows: int, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted row positions to keep, or None for all rows."""
    if n <= max_rows:
        return None
    return np.sort(rng.choice(n, size=max_rows, replace=False))


def _take(files: list[Path], column: str, index: np.ndarray | None) -> Iterator[pa.Array]:
    """Stream a column, keeping only the rows at `index` (global positions, sorted)."""
    start = 0
    for arr in _iter_column(files, column):
        end = start + len(arr)
        if index is None:
            yield arr
        else:
            lo, hi = np.searchsorted(index, [start, end])
            if hi > lo:
                yield arr.take(pa.array(index[lo:hi] - start))
        start = end


def _stored_embeddings(files: list[Path], index: np.ndarray | None) -> np.ndarray:
    blocks = []
    for arr in _take(files, "embedding", index):
        if arr.null_count:
            raise ValueError(f"pretrain.embedding has {arr.null_count} null rows in {files[0].parent}")
        if pa.types.is_fixed_size_list(arr.type):
            d = arr.type.list_size
            vals = arr.flatten().to_numpy(zero_copy_only=False)  # flatten honours slices/offsets
        else:  # a variable-length list column: every row must still have the same length
            vals = arr.flatten().to_numpy(zero_copy_only=False)
            d = len(vals) // max(1, len(arr))
        blocks.append(vals.reshape(len(arr), d))
    if not blocks:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(blocks).astype(np.float32, copy=False)


# ---- text statistics -------------------------------------------------------------------------


def text_stats(captions: Iterator[str] | list[str]) -> dict[str, Any]:
    """Length and type-token statistics of captions.

    Tokens are lowercased word tokens (regex `\\w+(?:['’]\\w+)*`: letters/digits, with inner
    apostrophes kept); punctuation is not a token. `ttr_mean_per_caption` is the mean over
    captions of (distinct tokens / tokens) in that caption, the reading of the Unicorn paper's
    0.68 that makes sense (corpus-level TTR of a million captions is tiny); `ttr_corpus` is
    distinct/total over the whole corpus, reported for completeness. Captions without tokens
    are skipped for per-caption TTR. Lengths are token counts per caption.
    """
    lengths: list[int] = []
    ttrs: list[float] = []
    vocab: set[str] = set()
    for text in captions:
        toks = words(text or "")
        lengths.append(len(toks))
        if toks:
            distinct = set(toks)
            ttrs.append(len(distinct) / len(toks))
            vocab |= distinct
    if not lengths:
        return {"captions": 0}
    arr = np.asarray(lengths, np.float64)
    total = int(arr.sum())
    pct = {f"p{q}": float(np.percentile(arr, q)) for q in (5, 25, 50, 75, 95)}
    return {
        "captions": len(lengths),
        "length_words": {"mean": float(arr.mean()), "std": float(arr.std()), "min": int(arr.min()),
                         "max": int(arr.max()), **pct},
        "ttr_mean_per_caption": float(np.mean(ttrs)) if ttrs else 0.0,
        "ttr_corpus": len(vocab) / total if total else 0.0,
        "vocabulary": len(vocab),
        "tokens": total,
        "ttr_definition": "mean over captions of distinct/total lowercased word tokens in that caption",
    }


def _caption_texts(files: list[Path], column: str) -> Iterator[str]:
    for arr in _iter_column(files, column):
        yield from (s or "" for s in arr.to_pylist())


def _counts(files: list[Path], column: str) -> dict[str, int]:
    c: Counter[str] = Counter()
    for arr in _iter_column(files, column):
        c.update("<null>" if v is None else str(v) for v in arr.to_pylist())
    return dict(c.most_common())


def _rejections(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    t = pq.read_table(path, columns=[c for c in ("stage", "reason") if c in pq.read_schema(path).names])
    by: dict[str, Counter[str]] = {}
    stages = t.column("stage").to_pylist() if "stage" in t.column_names else ["?"] * t.num_rows
    reasons = t.column("reason").to_pylist() if "reason" in t.column_names else ["?"] * t.num_rows
    for s, r in zip(stages, reasons, strict=True):
        by.setdefault(str(s), Counter())[str(r) if r is not None else "<none>"] += 1
    return {"total": t.num_rows,
            "by_stage": {s: {"total": sum(c.values()), "by_reason": dict(c.most_common())}
                         for s, c in sorted(by.items())}}


def _seed_balance(folder: Path, cap_files: list[Path]) -> dict[str, Any] | None:
    """Balanced vs uniform seed histograms when the build selected its seeds by concept (balance.py)."""
    path = folder / ARTIFACTS / SEED_CLUSTERS
    if not path.is_file():
        return None
    ids = ({i for arr in _iter_column(cap_files, "id") for i in arr.to_pylist()}
           if _has_column(cap_files, "id") else None)
    return balance_report(pq.read_table(path), ids)


# ---- writing ---------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _plots(art: Path, sizes: list[int], lengths: list[int]) -> list[str]:
    """PNG plots when matplotlib is installed; an empty list otherwise (it is not a dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on build machines
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    def save(name: str, title: str, xlabel: str, draw: Any) -> None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        draw(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("captions")
        ax.set_title(title)
        fig.tight_layout()
        with atomic_path(art / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(artifact(name))

    written: list[str] = []
    if sizes:
        save("cluster_sizes.png", "caption cluster sizes", "cluster (largest first)",
             lambda ax: ax.bar(range(1, len(sizes) + 1), sizes, width=1.0))
    if lengths:
        save("caption_lengths.png", "caption length", "words per caption",
             lambda ax: ax.hist(lengths, bins=min(50, max(1, max(lengths) - min(lengths) + 1))))
    return written


# ---- the report ------------------------------------------------------------------------------


TEXT_MAX_ROWS = 20_000  # captions embedded with a model (a seeded sample beyond): minutes on a CPU, not hours
MIN_ROWS_PER_CLUSTER = 2  # fewer rows than 2 k: the figure says nothing (5 of k=8 clusters hold most of 8 rows)


def settings_from_recipe(recipe: dict[str, Any] | None) -> dict[str, Any]:
    """k and encoder of the diversity report: report.k, and report.encoder, else balance.encoder, else
    transfer.encoder (the build's sentence encoder); hashed TF-IDF when the recipe is unknown."""
    from unicorn_datasets.recipe import ReportSection

    if not recipe:
        return {"k": ReportSection.k, "encoder": "hashed", "from": "defaults (no manifest)"}
    r = recipe.get("report") or {}
    enc = r.get("encoder") or (recipe.get("balance") or {}).get("encoder") or (recipe.get("transfer") or {}).get(
        "encoder") or "hashed"
    return {"k": int(r.get("k") or ReportSection.k), "encoder": enc, "from": "the build's recipe"}


def build_settings(folder: Path) -> dict[str, Any]:
    path = folder / ARTIFACTS / MANIFEST
    recipe = json.loads(path.read_text(encoding="utf-8")).get("recipe") if path.is_file() else None
    return settings_from_recipe(recipe)


def _embed_captions(texts: list[str], encoder: str, loaded: dict[str, Any]) -> tuple[np.ndarray, str]:
    if encoder == "hashed":
        return hashed_tfidf(texts), f"hashed-tfidf-{HASH_DIM}"
    enc = loaded.get(encoder)
    if enc is None:
        from unicorn_datasets.encoders import load_encoder

        enc = load_encoder(encoder)
    # a bar: 20,000 captions take minutes on a CPU, after the build's last stage bar has finished
    x = enc.encode_text(texts, batch_size=64, progress=f"diversity report ({encoder})")
    return x, str(enc.describe().get("encoder", encoder))


def _cluster(x: np.ndarray, k: int, seed: int) -> dict[str, Any]:
    n = len(x)
    if n < MIN_ROWS_PER_CLUSTER * k:
        return {"k": k, "status": "not enough rows",
                "why": f"{n} captions for k={k}: the cluster figures need at least {MIN_ROWS_PER_CLUSTER * k} "
                       f"({MIN_ROWS_PER_CLUSTER} per cluster); compare small builds with a smaller report.k",
                "cluster_sizes": [], "top5_share": None, "entropy": None, "entropy_normalised": None}
    km = kmeans(x, k, seed=seed, normalised=True)
    out = {"k": k, "status": "ok", "inertia": km.inertia, "iterations": km.iterations, **balance_stats(km.labels, k)}
    if k <= 5:  # the 5 largest clusters are all of them: 100% says nothing
        out.update(top5_share=None, top5_why=f"k={k}: the 5 largest clusters are all the clusters")
    return out


def report(folder: str | Path, *, k: int | None = None, seed: int = 0, embeddings: str = "text",
           encoder: str | None = None, max_rows: int | None = None, write: bool = True,
           settings: dict[str, Any] | None = None, loaded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Diversity/balance statistics of a built folder; also written to `artifacts/report.json`.

    loaded: {encoder name: an encoder already loaded} (a build's finish hands over Stage 3's), so it is not
    loaded twice.

    embeddings: "text" (the caption text embedded with `encoder`: default the build's report.encoder,
    balance.encoder or transfer.encoder, "hashed" for hashed TF-IDF), "hashed", or "stored" (the
    transferred `pretrain.embedding` vectors, which a c3 or prior transfer fills with noise or image-space
    outputs: not a measure of the captions). k defaults to the build's report.k, so builds of any size are
    clustered alike; fewer than 2 k rows give "not enough rows", not a figure. Vectors are L2-normalised
    before k-means. At most `max_rows` rows (a seeded sample; default 20,000 with a model, else 200,000)
    are clustered; text statistics use every caption.
    """
    folder = Path(folder)
    if embeddings not in ("text", "stored", "hashed"):
        raise ValueError(f"embeddings must be 'text', 'stored' or 'hashed', not {embeddings!r}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a dataset folder")
    settings = settings or build_settings(folder)  # a build's own finish passes its recipe's
    settings_from = settings["from"] if (k or settings["k"], encoder or settings["encoder"]) == (
        settings["k"], settings["encoder"]) else "arguments (--k / --encoder)"
    k = k or settings["k"]
    encoder = "hashed" if embeddings == "hashed" else (encoder or settings["encoder"])
    rng = np.random.default_rng(seed)
    cap_files, pre_files, ins_files = (_files(folder, c) for c in (CAPTIONS, PRETRAIN, INSTRUCT))
    text_files = cap_files if _has_column(cap_files, "caption") else pre_files
    if not _has_column(text_files, "caption"):
        raise ValueError(f"{folder} has no captions: neither captions/ nor pretrain/ Parquet "
                         "has a `caption` column")

    out: dict[str, Any] = {"folder": str(folder), "seed": seed}
    lengths: list[int] = []

    def texts() -> Iterator[str]:
        for t in _caption_texts(text_files, "caption"):
            lengths.append(len(words(t)))
            yield t

    out["text"] = text_stats(texts())
    out["n_captions"] = out["text"]["captions"]

    # -- clustering
    if embeddings == "stored":
        if not _has_column(pre_files, "embedding"):
            raise ValueError(f"{folder}: embeddings='stored' but pretrain/ has no `embedding` column")
        n_all = _num_rows(pre_files)
        index = _sample_index(n_all, max_rows or 200_000, rng)
        x, source, clustered = _stored_embeddings(pre_files, index), "pretrain.embedding", "transferred embeddings"
    else:
        n_all = _num_rows(text_files)
        index = _sample_index(n_all, max_rows or (200_000 if encoder == "hashed" else TEXT_MAX_ROWS), rng)
        texts_sample = [s or "" for arr in _take(text_files, "caption", index) for s in arr.to_pylist()]
        x, source = _embed_captions(texts_sample, encoder, loaded or {})
        clustered = "caption text"
    x = normalise(x)  # float32: upcasting float16 once beats doing it in every k-means pass
    n = len(x)
    clustering: dict[str, Any] = {"clustered": clustered, "embeddings": source, "encoder": encoder,
                                  "rows": n_all, "rows_clustered": n, "dim": int(x.shape[1]) if x.ndim == 2 else 0,
                                  "settings_from": settings_from}
    clustering.update(_cluster(x, k, seed))
    out["clustering"] = clustering
    # the headline numbers, side by side with Synth²'s (57.7% top-5 share, entropy 3.81; setting unknown)
    for key in ("k", "top5_share", "entropy", "entropy_normalised"):
        out[key] = clustering.get(key)
    out["synth2_reference"] = SYNTH2

    # -- composition and accounting
    out["per_source"] = _counts(cap_files, "source") if _has_column(cap_files, "source") else {}
    present = [c for c in CONCEPT_COLUMNS if _has_column(cap_files, c)]
    out["concepts"] = concept_report({c: [v for arr in _iter_column(cap_files, c) for v in arr.to_pylist()]
                                      for c in present}, _num_rows(cap_files))
    out["per_task"] = _counts(ins_files, "task") if _has_column(ins_files, "task") else {}
    out["rows"] = {c: _num_rows(f) for c in (s.config for s in registered() if s.config) if (f := _files(folder, c))}
    out["rejections"] = _rejections(folder / ARTIFACTS / REJECTIONS)
    out["seed_balance"] = _seed_balance(folder, cap_files)

    if write:
        art = folder / ARTIFACTS
        art.mkdir(exist_ok=True)
        out["plots"] = _plots(art, clustering.get("cluster_sizes", []), lengths)
        _write_json(art / REPORT, out)
    else:
        out["plots"] = []
    return out
