"""Embed real images with an encoder's image tower (the paper's test-time recipe: v - E[V]).

Output: a Parquet file with ``id`` (str), ``embedding`` (fixed-size list<float32>[D]) and optionally
``path``; plus ``<out>.mean.npy`` (float64 [D], the mean of the L2-normalised image embeddings before
centring). Both are written atomically. All embeddings are held in memory until the set mean is
known (fine for evaluation sets; 100K images x 1280-d = 0.5 GB).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unicorn_datasets.dataset.atomic import atomic_path
from unicorn_datasets.dataset.sources import is_saved_dataset, open_dataset
from unicorn_datasets.transfer.methods import l2_normalize

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

from unicorn_datasets.encoders import Encoder

__all__ = ["IMAGE_EXTENSIONS", "embed_images", "write_embeddings_parquet"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_DATASET_FILES = (".parquet", ".arrow")


def _open_image(src: str | Path | bytes) -> PILImage:
    from PIL import Image

    im = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
    return im.convert("RGB")  # forces a full decode, so truncated/corrupt files fail here, not later


def _image_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image, UnidentifiedImageError

    return (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def _iter_folder(root: Path) -> Iterator[tuple[str, str | None, Any]]:
    """(id, path, loader) for every image file under root, sorted by relative path."""
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    for p in files:
        rel = p.relative_to(root).as_posix()
        yield rel, rel, p


def _load_dataset(source: Path, split: str) -> Any:
    ds = open_dataset(source, split)
    if "image" not in ds.column_names:
        raise ValueError(f"{source}: no 'image' column (columns: {', '.join(ds.column_names)})")
    return ds


def _iter_dataset(ds: Any) -> Iterator[tuple[str, str | None, Any]]:
    import datasets

    # Decode ourselves so one corrupt row is reported and skipped instead of aborting the run.
    if isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    has_id = "id" in ds.column_names
    for i, row in enumerate(ds):
        img = row["image"]
        path = img.get("path") if isinstance(img, dict) else None
        src: Any = img.get("bytes") or path if isinstance(img, dict) else img
        yield (str(row["id"]) if has_id else str(i)), path, src


def _is_dataset_source(source: Path) -> bool:
    if source.is_file():
        return source.suffix.lower() == ".parquet"
    if is_saved_dataset(source):
        return True
    has_data = any(p.suffix.lower() in _DATASET_FILES for p in source.rglob("*") if p.is_file())
    has_images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in source.rglob("*") if p.is_file())
    return has_data and not has_images


def write_embeddings_parquet(
    path: str | os.PathLike[str], ids: list[str], emb: np.ndarray, paths: list[str | None] | None = None
) -> None:
    """Atomically write ``id`` + ``embedding`` (fixed-size list<float32>[D]) (+ ``path``) as Parquet."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"embeddings {emb.shape} do not match {len(ids)} ids")
    dim = emb.shape[1]
    cols: dict[str, pa.Array] = {
        "id": pa.array(ids, type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), dim),
    }
    if paths is not None:
        cols["path"] = pa.array(paths, type=pa.string())
    table = pa.table(cols)
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp)


def embed_images(
    source: str | os.PathLike[str],
    encoder: Encoder,
    out_path: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    keep_path: bool = False,
    center: bool = True,
    renormalize: bool = False,
    split: str = "train",
) -> dict[str, Any]:
    """Embed every image of ``source`` and write ``out_path`` (Parquet) and ``<out_path>.mean.npy``.

    ``source``: a folder of image files (recursive, sorted; ids are relative paths), or a local
    ``datasets`` folder (save_to_disk output or data files) / a .parquet file with an ``image`` column
    (ids: the ``id`` column if present, else the row index). Unreadable images are skipped and listed
    in the summary with their path and error. ``center`` subtracts the mean over this image set (the
    paper's recipe); ``renormalize`` re-normalises after centring (not stated in the paper; off).
    """
    t0 = time.monotonic()
    src = Path(source).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"image source not found: {src}")
    if not encoder.supports_images:
        raise ValueError(f"encoder {encoder.spec!r} has no image tower; use a CLIP/SigLIP/LLM2CLIP model")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    is_dataset = _is_dataset_source(src)
    items = _iter_dataset(_load_dataset(src, split)) if is_dataset else _iter_folder(src)
    errors = _image_errors()

    ids: list[str] = []
    paths: list[str | None] = []
    chunks: list[np.ndarray] = []
    failed: list[dict[str, str]] = []
    batch: list[PILImage] = []
    seen = 0

    def flush() -> None:
        if batch:
            chunks.append(encoder.encode_images(batch, batch_size=batch_size))
            batch.clear()

    for item_id, path, loader in items:
        seen += 1
        try:
            if loader is None:
                raise ValueError("row has neither image bytes nor a path")
            im = _open_image(loader) if isinstance(loader, str | Path | bytes) else loader.convert("RGB")
        except errors as e:
            failed.append({"id": item_id, "path": path or item_id, "error": f"{type(e).__name__}: {e}"})
            continue
        ids.append(item_id)
        paths.append(path)
        batch.append(im)
        if len(batch) >= batch_size:
            flush()
    flush()

    if not ids:
        detail = f"; {len(failed)} unreadable, first: {failed[0]['path']}" if failed else ""
        raise ValueError(f"no readable images found in {src} ({seen} candidates{detail})")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{src}: duplicate ids in the 'id' column")

    emb = np.concatenate(chunks, axis=0).astype(np.float64)
    mean = emb.mean(axis=0)
    out = emb - mean if center else emb
    if renormalize:
        out = l2_normalize(out)

    out_path = Path(out_path)
    write_embeddings_parquet(out_path, ids, out.astype(np.float32), paths if keep_path else None)
    mean_path = out_path.with_name(out_path.name + ".mean.npy")
    with atomic_path(mean_path) as tmp, open(tmp, "wb") as f:
        np.save(f, mean)
    return {
        "source": str(src),
        "source_kind": "dataset" if is_dataset else "folder",
        "out": str(out_path),
        "mean_path": str(mean_path),
        "n_candidates": seen,
        "n_images": len(ids),
        "n_failed": len(failed),
        "failed": failed,
        "dim": int(emb.shape[1]),
        "centered": center,
        "renormalized": renormalize,
        "encoder": encoder.describe(),
        "seconds": round(time.monotonic() - t0, 3),
    }
