"""Stage 3 math (mean accumulation, transfer methods, gap statistics) and the Bunny export."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicorn_datasets.dataset.export import DimMismatch, export_bunny
from unicorn_datasets.transfer.methods import (
    MeanAccumulator,
    apply_transfer,
    gap_statistics,
    l2_normalize,
    reduce_states,
    row_seeds,
)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return l2_normalize(rng.standard_normal((n, d))).astype(np.float32)


# -- MeanAccumulator ---------------------------------------------------------------------------


@pytest.mark.parametrize("cuts", [[], [1], [7, 8, 9], [0, 50, 50, 99], list(range(1, 100, 3))])
def test_merged_partial_states_equal_whole_mean(tmp_path: Path, cuts: list[int]) -> None:
    x = _unit(np.random.default_rng(0), 100, 16)
    whole = MeanAccumulator().add(x).mean()
    np.testing.assert_allclose(whole, x.astype(np.float64).mean(axis=0), atol=1e-12)
    parts = np.split(x, cuts)
    # in memory, through dict states, and through saved files (reduced in sorted-path order)
    merged = MeanAccumulator()
    for p in parts:
        merged.merge(MeanAccumulator.from_state(MeanAccumulator().add(p).to_state()))
    files = []
    for i, p in enumerate(parts):
        f = tmp_path / f"part-{i:05d}.npz"
        MeanAccumulator().add(p).save(f)
        files.append(f)
    from_files = reduce_states(reversed(files))
    for acc in (merged, from_files):
        assert acc.count == 100
        np.testing.assert_allclose(acc.mean(), whole, rtol=0, atol=1e-12)
    assert from_files.mean().dtype == np.float64


def test_accumulator_errors_and_empty_parts() -> None:
    acc = MeanAccumulator()
    with pytest.raises(ValueError, match="empty"):
        acc.mean()
    acc.merge(MeanAccumulator())  # an empty shard's state is harmless
    acc.add(np.zeros((0, 4), np.float32)).add(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="dimension"):
        acc.add(np.ones((1, 5)))
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.full((1, 4), np.nan))
    np.testing.assert_array_equal(acc.mean(), np.ones(4))


# -- transfer ----------------------------------------------------------------------------------


def _synthetic_pairs(n: int = 400, d: int = 64, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Images: random unit vectors. Texts: image + a constant modality offset + small noise, normalised."""
    rng = np.random.default_rng(seed)
    image = _unit(rng, n, d)
    offset = 2.0 * l2_normalize(rng.standard_normal(d))
    text = l2_normalize(image + offset + 0.05 * rng.standard_normal((n, d))).astype(np.float32)
    return text, image


def _paired_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(l2_normalize(a) * l2_normalize(b), axis=1)))


def test_mean_shift_closes_a_known_gap() -> None:
    text, image = _synthetic_pairs()
    mu = MeanAccumulator().add(text).mean()
    before = _paired_cos(text, image)
    shifted = apply_transfer(text, "mean-shift", mean=mu)
    assert shifted.dtype == np.float32 and shifted.shape == text.shape
    assert _paired_cos(shifted, image) > before + 0.3
    # released code: no re-normalisation; paper v2: re-normalised
    assert not np.allclose(np.linalg.norm(shifted, axis=1), 1.0, atol=1e-3)
    renorm = apply_transfer(text, "mean-shift", mean=mu, renormalize=True)
    np.testing.assert_allclose(np.linalg.norm(renorm, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        renorm, l2_normalize(text.astype(np.float64) - mu).astype(np.float32), atol=1e-7
    )
    unchanged = apply_transfer(text, "none", mean=mu)
    np.testing.assert_array_equal(unchanged, text)
    assert _paired_cos(unchanged, image) == pytest.approx(before)


def test_c3_is_deterministic_per_row() -> None:
    text, image = _synthetic_pairs(n=50)
    mu = text.astype(np.float64).mean(axis=0)
    ids = [f"row-{i}" for i in range(len(text))]
    seeds = row_seeds(ids, 1234)
    assert seeds == row_seeds(ids, 1234) and seeds != row_seeds(ids, 1235)
    full = apply_transfer(text, "c3", mean=mu, noise_sigma=0.05, rng_seed_per_row=seeds)
    # same rows in other batch compositions (reversed, split) give the same vectors
    rev = apply_transfer(text[::-1], "c3", mean=mu, noise_sigma=0.05, rng_seed_per_row=seeds[::-1])
    np.testing.assert_array_equal(rev[::-1], full)
    half = apply_transfer(text[10:20], "c3", mean=mu, noise_sigma=0.05, rng_seed_per_row=seeds[10:20])
    np.testing.assert_array_equal(half, full[10:20])
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    noiseless = apply_transfer(text, "mean-shift", mean=mu, renormalize=True)
    assert not np.allclose(full, noiseless, atol=1e-3)  # the noise is really there
    assert _paired_cos(full, image) > _paired_cos(text, image) + 0.2
    with pytest.raises(ValueError, match="seed"):
        apply_transfer(text, "c3", mean=mu, noise_sigma=0.05)


def test_apply_transfer_rejects_bad_input() -> None:
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="unknown transfer method"):
        apply_transfer(x, "shift", mean=np.zeros(4))
    with pytest.raises(ValueError, match="needs the text mean"):
        apply_transfer(x, "mean-shift")
    with pytest.raises(ValueError, match="shape"):
        apply_transfer(x, "mean-shift", mean=np.zeros(5))


def test_gap_statistics_reports_each_method() -> None:
    text, image = _synthetic_pairs()
    image = l2_normalize(image + 0.5 * l2_normalize(np.ones(image.shape[1]))).astype(np.float32)  # image mean
    report = gap_statistics(text, image, MeanAccumulator().add(text).mean(), noise_sigma=0.02)
    assert report["n"] == len(text) and report["dim"] == text.shape[1]
    assert set(report["methods"]) == {"none", "mean-shift", "c3"}
    assert report["methods"]["none"]["paired_cosine"] == pytest.approx(report["before"]["paired_cosine"])
    ms = report["methods"]["mean-shift"]
    assert ms["paired_cosine"] > report["before"]["paired_cosine"] + 0.2
    # the paper's test-time recipe (image minus its set mean) matches a mean-shifted text best
    assert ms["paired_cosine_centered_image"] > ms["paired_cosine"]
    assert report["gap_norm"] > 0.5


# -- export_bunny ------------------------------------------------------------------------------


def _write_dataset(root: Path, n: int = 5, dim: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    conv_type = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    emb_col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), dim)
    ids = [f"cap-{i:03d}" for i in range(n)]
    pretrain = pa.table(
        {
            "id": ids,
            "caption": [f"caption {i}" for i in range(n)],
            "conversations": pa.array(
                [
                    [
                        {"from": "human", "value": "<image>\nDescribe the image."},
                        {"from": "gpt", "value": f"c{i}"},
                    ]
                    for i in range(n)
                ],
                type=conv_type,
            ),
            "embedding": emb_col,
        }
    )
    instruct = pa.table(
        {
            "id": ids[:3],
            "task": ["qa", "qa", "reasoning"],
            "conversations": pa.array(
                [
                    # one row lacks <image>: the export must put it into the first human turn
                    [
                        {"from": "human", "value": "What is shown?" if i == 1 else "<image>\nWhat is shown?"},
                        {"from": "gpt", "value": "A"},
                        {"from": "human", "value": "Why?"},
                        {"from": "gpt", "value": "Because."},
                    ]
                    for i in range(3)
                ],
                type=conv_type,
            ),
            "embedding": emb_col[:3],
        }
    )
    for name, table in (("pretrain", pretrain), ("instruct", instruct)):
        (root / name).mkdir(parents=True)
        pq.write_table(table, root / name / "train-00000-of-00001.parquet")
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: pretrain\n  data_files:\n  - split: train\n    path: pretrain/*.parquet\n"
        "- config_name: instruct\n  data_files:\n  - split: train\n    path: instruct/*.parquet\n"
        "---\n# tiny\n"
    )
    return emb


def test_export_bunny_roundtrip(tmp_path: Path) -> None:
    src, dst = tmp_path / "unicorn", tmp_path / "bunny"
    emb = _write_dataset(src)
    cache = str(tmp_path / "cache")
    with pytest.raises(DimMismatch, match="1280.*llm2clip.*--allow-dim-mismatch"):
        export_bunny(src, dst, cache_dir=cache)
    assert not (dst / "pretrain.json").exists() and not list(dst.glob(".export-*"))  # nothing half-written
    summary = export_bunny(src, dst, cache_dir=cache, allow_dim_mismatch=True)
    assert summary["configs"]["pretrain"]["rows"] == 5 and summary["configs"]["instruct"]["rows"] == 3
    assert summary["configs"]["instruct"]["image_token_added"] == 1
    # one embedding folder for both files: instruct ids are caption ids, so no id is stored twice
    embeds = [e for p in summary["pickles"] for e in pickle.loads((dst / p).read_bytes())]
    assert [e["id"] for e in embeds] == [f"cap-{i:03d}" for i in range(5)]
    for e, want in zip(embeds, emb, strict=True):
        assert e["embed"].dtype == np.float32 and e["embed"].shape == (8,)
        np.testing.assert_array_equal(e["embed"], want)
    for config, n in (("pretrain", 5), ("instruct", 3)):
        rows = json.loads((dst / f"{config}.json").read_text())
        assert [r["id"] for r in rows] == [f"cap-{i:03d}" for i in range(n)]
        for i, r in enumerate(rows):
            assert set(r) == {"id", "caption", "conversations"}
            assert r["caption"] == f"caption {i}"  # instruct records: joined to their caption by id
            first_human = next(t for t in r["conversations"] if t["from"] == "human")
            assert first_human["value"].startswith("<image>")
    readme = (dst / "README.md").read_text()
    assert "mm_hidden_size 8" in readme and "576" in readme and "mlp2x_gelu" in readme
    assert "Not mean-shifted" in readme  # this folder has no artifacts/transfer.json
    assert not list(dst.glob(".export-*"))  # staging folders are cleaned up

    # chunked pickles replace the earlier ones; concatenated they give the same rows
    summary = export_bunny(src, dst, configs=["pretrain"], chunk_size=2, cache_dir=cache, allow_dim_mismatch=True)
    assert summary["pickles"] == [f"embeds/embeds_{i:05d}.pkl" for i in range(3)]
    chunks = [pickle.loads(p.read_bytes()) for p in sorted((dst / "embeds").glob("*.pkl"))]
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert [e["id"] for c in chunks for e in c] == [
        r["id"] for r in json.loads((dst / "pretrain.json").read_text())
    ]

    with pytest.raises(ValueError, match="captions"):
        export_bunny(src, dst, configs=["captions"], cache_dir=cache)
