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

from unicorn_datasets.dataset.sources import is_saved_dataset, open_dataset
from unicorn_datasets.text.hygiene import TextChanges, TextError, clean, read_lines


def _read_rows(p: Path, changes: TextChanges) -> list[dict[str, Any]]:
    if p.is_dir() or p.suffix == ".parquet":  # a saved dataset, a folder of data files, a Parquet file
        if p.is_dir() and not is_saved_dataset(p) and not any(p.rglob("*.parquet")):
            raise ValueError(f"{p}: a pairs folder needs Parquet files or a saved dataset")
        return open_dataset(p).to_list()
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
