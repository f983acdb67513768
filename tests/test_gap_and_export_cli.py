"""`unicorn gap-stats` and `unicorn export` from the command line, on real files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicorn_datasets.cli import main
from unicorn_datasets.encoders import load_encoder

CAPTIONS = [
    "A red bus parked beside a brick station on a rainy morning.",
    "Two children flying a yellow kite on a grassy hill.",
    "A bowl of ramen with a soft egg and green onions on a wooden table.",
    "A black dog catching a frisbee in a sunny park.",
    "A snowy mountain peak above a pine forest under a blue sky.",
    "A woman reading a book on a bench beside a lake.",
]


def test_gap_stats_shows_mean_shift_closing_a_known_gap(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = load_encoder("minilm").encode_text(CAPTIONS).astype(np.float64)
    rng = np.random.default_rng(0)
    offset = rng.standard_normal(text.shape[1])
    offset *= 0.8 / np.linalg.norm(offset)  # a constant modality gap, like CLIP's
    image = text + offset + 0.2 / np.sqrt(text.shape[1]) * rng.standard_normal(text.shape)  # noise norm ~0.2
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"caption": CAPTIONS, "image_embedding": image.tolist()}), pairs)
    assert main(["gap-stats", str(pairs), "--encoder", "minilm"]) == 0
    report = json.loads(capsys.readouterr().out)
    before = report["before"]["paired_cosine"]
    after = report["methods"]["mean-shift"]["paired_cosine_centered_image"]
    assert after > before + 0.1
    assert abs(report["methods"]["none"]["paired_cosine"] - before) < 1e-6


def test_gap_stats_missing_columns_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["x"]}), bad)
    assert main(["gap-stats", str(bad), "--encoder", "minilm"]) != 0
    assert "caption" in capsys.readouterr().err


def test_export_bunny_from_a_built_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ds"
    (out / "pretrain").mkdir(parents=True)
    emb = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float16)
    ask = {"from": "human", "value": "<image>\nDescribe the image."}
    conv = [[ask, {"from": "gpt", "value": c}] for c in CAPTIONS[:3]]
    table = pa.table({"id": ["a", "b", "c"], "caption": CAPTIONS[:3], "conversations": conv,
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 8)})
    pq.write_table(table, out / "pretrain" / "train-00000-of-00001.parquet")
    (out / "README.md").write_text("---\nconfigs:\n- config_name: pretrain\n  data_files:\n  - split: train\n"
                                   "    path: pretrain/train-*.parquet\n---\n")
    args = ["export", str(out), "--format", "bunny", "--to", str(tmp_path / "bunny")]
    assert main(args) != 0  # 8-d embeddings: the trainer's projector takes 1280
    assert "--allow-dim-mismatch" in capsys.readouterr().err
    assert main([*args, "--allow-dim-mismatch"]) == 0
    rows = json.loads((tmp_path / "bunny" / "pretrain.json").read_text())
    with open(tmp_path / "bunny" / "embeds" / "embeds_00000.pkl", "rb") as f:
        embeds = pickle.load(f)
    assert [r["id"] for r in rows] == [e["id"] for e in embeds] == ["a", "b", "c"]
    assert rows[0]["conversations"][0]["value"].startswith("<image>")
    np.testing.assert_allclose(embeds[1]["embed"], emb[1].astype(np.float32))
