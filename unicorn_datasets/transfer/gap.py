"""`unicorn gap-stats`: how well transferred caption embeddings match REAL paired image embeddings.

Input: pairs (a Parquet/JSONL file or a dataset folder) with a `caption` column and either an
`image_embedding` column (vectors from the same encoder's image tower) or an `image` column of
image paths (encoded here). Output: paired cosine before/after each transfer method
(transfer.gap_statistics). `encode_pairs` is shared with `unicorn prior train/eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unicorn_datasets.text.hygiene import TextChanges, TextError, clean, read_lines


def _read_rows(p: Path, changes: TextChanges) -> list[dict[str, Any]]:
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

    rows = []
    for lineno, line in enumerate(read_lines(p, changes), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TextError(f"{p}:{lineno}:{e.colno}: invalid JSON ({e.msg})") from None
    return rows


def load_pairs(
    path: str, changes: TextChanges | None = None
) -> tuple[list[str], np.ndarray | None, list[str] | None]:
    """Captions (cleaned like seeds, changes counted in `changes`) and image embeddings or image paths."""
    changes = changes if changes is not None else TextChanges()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"pairs file not found: {path}")
    rows = _read_rows(p, changes)
    if not rows or not isinstance(rows[0], dict) or "caption" not in rows[0]:
        raise ValueError(f"{path}: needs a 'caption' column and 'image_embedding' or 'image' (paths)")
    captions = [clean(str(r.get("caption") or ""), changes) for r in rows]
    if "image_embedding" in rows[0]:
        return captions, np.asarray([r["image_embedding"] for r in rows], dtype=np.float64), None
    if "image" in rows[0]:
        base = p if p.is_dir() else p.parent
        return captions, None, [str(base / r["image"]) for r in rows]
    raise ValueError(f"{path}: needs an 'image_embedding' column or an 'image' column of paths")


def encode_pairs(
    pairs: str, encoder: Any, *, batch_size: int = 32, changes: TextChanges | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(captions, L2-normalised text embeddings, L2-normalised image embeddings) of a pairs file; image paths
    go through the encoder's image tower."""
    captions, image_emb, image_paths = load_pairs(pairs, changes)
    text = encoder.encode_text(captions, batch_size=batch_size)
    if image_emb is None:
        from PIL import Image

        image_emb = encoder.encode_images([Image.open(p).convert("RGB") for p in image_paths or []], batch_size)
    image_emb = image_emb / np.maximum(np.linalg.norm(image_emb, axis=1, keepdims=True), 1e-12)
    return captions, text, image_emb


def gap_report(pairs: str, encoder: Any, *, text_mean: str | None = None, batch_size: int = 32,
               renormalize: bool = False, noise_sigma: float = 0.0) -> dict[str, Any]:
    from unicorn_datasets.transfer.methods import gap_statistics

    changes = TextChanges()
    _, text, image_emb = encode_pairs(pairs, encoder, batch_size=batch_size, changes=changes)
    mean = np.load(text_mean) if text_mean else None  # a build's artifacts/text_mean.npy: the mean used in training
    stats = gap_statistics(text, image_emb, mean, renormalize=renormalize, noise_sigma=noise_sigma)
    return {**stats, "caption_cleaning": changes.as_dict()}
