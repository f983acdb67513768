"""Opening a dataset someone hands us (seed captions, caption/image pairs, an image set): one set of rules.

- a folder written by `save_to_disk` (a Dataset or a DatasetDict): `datasets.load_from_disk`;
- a `.parquet` file: that file, as one split;
- anything else (a folder of data files, a Hub id): `datasets.load_dataset` (with `streaming`, rows are read as
  they are iterated: a caption set hosted with its images never downloads the images).
A DatasetDict gives `split`; with no split asked for, "train" or else its first split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SAVED_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")  # what save_to_disk writes


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS)


def open_dataset(source: str | Path, split: str | None = None, *, config: str | None = None,
                 revision: str | None = None, streaming: bool = False) -> Any:
    """The rows of `source` as a `datasets.Dataset` (or IterableDataset when streaming); a missing split is a
    ValueError naming the ones there are."""
    import datasets

    path = Path(source).expanduser()
    if is_saved_dataset(path):
        ds: Any = datasets.load_from_disk(str(path))
    elif path.is_file() and path.suffix.lower() == ".parquet":
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=streaming)
    else:
        ds = datasets.load_dataset(str(path) if path.is_dir() else str(source), config, revision=revision,
                                   streaming=streaming)
    if isinstance(ds, datasets.DatasetDict | datasets.IterableDatasetDict):
        if split is None:
            split = "train" if "train" in ds else next(iter(ds))
        if split not in ds:
            raise ValueError(f"{source}: no split {split!r} (has {', '.join(ds)})")
        ds = ds[split]
    return ds
