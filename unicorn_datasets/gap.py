"""`unicorn gap-stats`: how well transferred caption embeddings match REAL paired image embeddings.

Input: a Parquet/JSONL file (or a dataset folder) of pairs with a `caption` column and either an `image_embedding`
column (vectors from the same encoder's image tower) or an `image` column of image paths
(encoded here). Output: paired cosine before/after each transfer method (transfer.gap_statistics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _read_rows(p: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    if p.is_dir():  # a dataset folder: save_to_disk output or Parquet files
        import datasets

        if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(p))
            ds = ds["train"] if isinstance(ds, datasets.DatasetDict) else ds
            return ds.to_list()
        files = sorted(p.rglob("*.parquet"))
        if not files:
            raise ValueError(f"{p}: a pairs folder needs Parquet files or a saved dataset")
        return [r for f in files for r in pq.read_table(f).to_pylist()]
    if p.suffix == ".parquet":
        return pq.read_table(p).to_pylist()
    import json

    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_pairs(path: str) -> tuple[list[str], np.ndarray | None, list[str] | None]:
    """(captions, image embeddings or None, image paths or None) from a .parquet/.jsonl file or a dataset folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"pairs file not found: {path}")
    rows = _read_rows(p)
    if not rows or "caption" not in rows[0]:
        raise ValueError(f"{path}: needs a 'caption' column and 'image_embedding' or 'image' (paths)")
    captions = [str(r["caption"]) for r in rows]
    if "image_embedding" in rows[0]:
        return captions, np.asarray([r["image_embedding"] for r in rows], dtype=np.float64), None
    if "image" in rows[0]:
        base = p if p.is_dir() else p.parent
        return captions, None, [str(base / r["image"]) for r in rows]
    raise ValueError(f"{path}: needs an 'image_embedding' column or an 'image' column of paths")


def encode_pairs(pairs: str, encoder: Any, *, batch_size: int = 32) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(captions, L2-normalised text embeddings, L2-normalised image embeddings) of a pairs file; image paths
    go through the encoder's image tower."""
    captions, image_emb, image_paths = load_pairs(pairs)
    text = encoder.encode_text(captions, batch_size=batch_size)
    if image_emb is None:
        from PIL import Image

        image_emb = encoder.encode_images([Image.open(p).convert("RGB") for p in image_paths or []], batch_size)
    image_emb = image_emb / np.maximum(np.linalg.norm(image_emb, axis=1, keepdims=True), 1e-12)
    return captions, text, image_emb


def gap_report(pairs: str, encoder: Any, *, text_mean: str | None = None, batch_size: int = 32,
               renormalize: bool = False, noise_sigma: float = 0.0) -> dict[str, Any]:
    from .transfer import gap_statistics

    _, text, image_emb = encode_pairs(pairs, encoder, batch_size=batch_size)
    mean = np.load(text_mean) if text_mean else None  # a build's artifacts/text_mean.npy: the mean used in training
    return gap_statistics(text, image_emb, mean, renormalize=renormalize, noise_sigma=noise_sigma)
