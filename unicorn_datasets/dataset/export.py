"""Export a built dataset folder to what the authors' Bunny-based trainer reads, unchanged.

Their contract (see /work/shared/reference/unicorn.md and the README written next to the export):
- ``{config}.json`` (``pretrain``, ``instruct``): a JSON list of
  ``{"id": str, "caption": str, "conversations": [{"from", "value"}, ...]}``. Their loader skips a
  record without ``caption``, so every record carries one: instruct records get the Stage-1 caption of
  the same id. ``<image>`` is put at the front of the first human turn (counted when it was missing).
- ``embeds/*.pkl``: every pickle in that one folder is loaded and concatenated; each is a list of
  ``{"id": str, "embed": np.float32 array (D,)}``, matched to records by ``str(id)``. Instruction ids
  equal their caption ids, so one set of pickles (the pretrain embeddings, plus any instruct id they
  lack) serves both JSON files; ``chunk_size`` rows per pickle.
- their projector input (``mm_hidden_size``) is 1280 (LLM2CLIP): another D is refused unless
  ``allow_dim_mismatch`` (then the trainer's ``mm_hidden_size`` must be set to D).
- MC option lines are written as built (``instruct.option_format``), or rewritten to ``option_format``
  (``"A:"``: the authors' released data; ``"A."``: the paper's figure).
Everything is written into a staging folder inside the target and moved in only once complete; rows
are streamed in Arrow batches.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from unicorn_datasets.dataset.atomic import swap_folder
from unicorn_datasets.dataset.contract import OPTION_LINE, assert_rows
from unicorn_datasets.dataset.layout import ARTIFACTS, TRANSFER
from unicorn_datasets.recipe import OPTION_FORMATS
from unicorn_datasets.text.tokens import IMAGE_TOKEN

__all__ = ["DEFAULT_CONFIGS", "IMAGE_TOKEN", "TRAINER_DIM", "DimMismatch", "export_bunny"]

DEFAULT_CONFIGS = ("pretrain", "instruct")
_BATCH_ROWS = 4096


def _embeddings(col: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
    """Arrow list/fixed-size-list column -> [N, D] numpy without going through Python floats."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if arr.null_count:
        raise ValueError(f"{where}: {arr.null_count} rows have no embedding")
    if pa.types.is_fixed_size_list(arr.type):
        dim = arr.type.list_size
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = np.asarray(arr.value_lengths())
        if n and (lengths != lengths[0]).any():
            raise ValueError(f"{where}: embeddings have different lengths ({lengths.min()}..{lengths.max()})")
        dim = int(lengths[0]) if n else 0
    else:
        raise ValueError(f"{where}: 'embedding' column has type {arr.type}, expected a list of floats")
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(n, dim) if n else np.zeros((0, dim), dtype=values.dtype)


def _conversations(conv: Any, where: str) -> tuple[list[dict[str, str]], bool]:
    """Normalise to [{"from", "value"}]; make sure the first human turn carries <image>."""
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"{where}: 'conversations' must be a non-empty list")
    turns = []
    for t in conv:
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise ValueError(f"{where}: every turn needs 'from' and 'value', got {t!r}")
        turns.append({"from": str(t["from"]), "value": str(t["value"])})
    first_human = next((t for t in turns if t["from"] == "human"), None)
    if first_human is None:
        raise ValueError(f"{where}: no human turn")
    if IMAGE_TOKEN in first_human["value"]:
        return turns, False
    first_human["value"] = IMAGE_TOKEN + "\n" + first_human["value"]
    return turns, True


def _reformat_options(turns: list[dict[str, str]], option_format: str) -> None:
    """Rewrite the option lines ("A. x" / "A: x") that end each human turn of an MC row to ``option_format``."""
    sep = option_format[1:]
    for t in turns:
        if t["from"] != "human":
            continue
        lines = t["value"].split("\n")
        tail = [OPTION_LINE.match(ln) for ln in lines[-4:]]
        if len(lines) > 4 and all(tail) and [m.group(1) for m in tail if m] == ["A", "B", "C", "D"]:
            lines[-4:] = [f"{ln[0]}{sep}{ln[2:]}" for ln in lines[-4:]]
            t["value"] = "\n".join(lines)


def _batches(ds: Any) -> Iterator[pa.Table]:
    table = ds.with_format("arrow")
    for start in range(0, len(ds), _BATCH_ROWS):
        yield table[start : start + _BATCH_ROWS]


def _available_configs(out_dir: str) -> list[str]:
    from datasets import get_dataset_config_names

    try:
        return list(get_dataset_config_names(out_dir))
    except Exception as e:  # unreadable card/folder: name the folder in the message
        raise ValueError(f"cannot read dataset configs from {out_dir}: {e}") from e


TRAINER_DIM = 1280  # the authors' mm_hidden_size: LLM2CLIP's embedding size
EMBED_DIR = "embeds"
DEFAULT_CHUNK = 200_000  # rows per pickle (the authors' later release uses 200K per file)


class DimMismatch(ValueError):
    pass


def _check_dim(dim: int, allow: bool) -> None:
    if dim != TRAINER_DIM and not allow:
        raise DimMismatch(
            f"the embeddings are {dim}-d but the authors' trainer hard-codes mm_hidden_size={TRAINER_DIM} "
            f"(the LLM2CLIP encoder): rebuild with --encoder llm2clip --trust-remote-code ({TRAINER_DIM}-d), "
            f"or export with --allow-dim-mismatch and set the trainer's mm_hidden_size (the projector's input "
            f"size) to {dim}"
        )


def _captions_by_id(src: str, wanted: set[str], cache_dir: str | None, available: list[str]) -> dict[str, str]:
    """Stage-1 captions of the `wanted` ids, from the captions config (or pretrain, which carries them)."""
    from datasets import load_dataset

    found: dict[str, str] = {}
    for config in ("captions", "pretrain"):
        if config not in available or len(found) == len(wanted):
            continue
        ds = load_dataset(src, config, split="train", cache_dir=cache_dir).select_columns(["id", "caption"])
        for table in _batches(ds):
            for rid, cap in zip(table.column("id").to_pylist(), table.column("caption").to_pylist(), strict=True):
                if str(rid) in wanted and cap:
                    found.setdefault(str(rid), cap)
    return found


class _Pickles:
    """Writes `{"id", "embed"}` records into embeds/embeds_NNNNN.pkl, `chunk` rows per file."""

    def __init__(self, folder: Path, chunk: int, dtype: np.dtype) -> None:
        self.folder, self.chunk, self.dtype = folder, chunk, dtype
        self.pending: list[dict[str, Any]] = []
        self.files: list[str] = []
        self.ids: set[str] = set()
        self.total: np.ndarray | None = None  # float64 sum, to report the mean of what was exported

    def add(self, rid: str, vec: np.ndarray) -> None:
        if rid in self.ids:  # an instruct id whose embedding the pretrain pickles already hold
            return
        self.ids.add(rid)
        v = vec.astype(self.dtype, copy=True)
        self.total = v.astype(np.float64) if self.total is None else self.total + v
        self.pending.append({"id": rid, "embed": v})
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.pending and self.files:
            return
        name = f"embeds_{len(self.files):05d}.pkl"
        with open(self.folder / name, "wb") as f:
            pickle.dump(self.pending, f, protocol=pickle.HIGHEST_PROTOCOL)
        self.files.append(name)
        self.pending = []


def _write_config(
    ds: Any, config: str, stage: Path, pickles: _Pickles, captions: dict[str, str], allow_dim_mismatch: bool,
    option_format: str | None = None,
) -> dict[str, Any]:
    for col in ("id", "conversations", "embedding"):
        if col not in ds.column_names:
            raise ValueError(f"config {config!r}: missing column {col!r} (has {', '.join(ds.column_names)})")
    seen: set[str] = set()
    added = n = 0
    dim: int | None = None
    with open(stage / f"{config}.json", "wb") as f:
        f.write(b"[")
        for table in _batches(ds):
            ids = [str(x) for x in table.column("id").to_pylist()]
            convs = table.column("conversations").to_pylist()
            tasks = table.column("task").to_pylist() if "task" in table.column_names else [None] * len(ids)
            own = table.column("caption").to_pylist() if "caption" in table.column_names else [None] * len(ids)
            emb = _embeddings(table.column("embedding"), f"config {config!r}, rows {n}..{n + len(ids) - 1}")
            if dim is None:
                dim = int(emb.shape[1])
                _check_dim(dim, allow_dim_mismatch)
            elif emb.shape[1] != dim:
                raise ValueError(f"config {config!r}: embedding size changes from {dim} to {emb.shape[1]}")
            for k, (rid, conv, cap) in enumerate(zip(ids, convs, own, strict=True)):
                where = f"config {config!r}, row {n} (id {rid!r})"
                if rid in seen:  # the trainer joins by id: duplicates would be ambiguous
                    raise ValueError(f"{where}: duplicate id")
                seen.add(rid)
                caption = cap or captions.get(rid)
                if not caption:  # their loader would skip the record: refuse rather than lose it
                    raise ValueError(f"{where}: no caption for this id (the trainer skips records without one)")
                turns, was_added = _conversations(conv, where)
                added += was_added
                if option_format is not None and tasks[k] == "mc":
                    _reformat_options(turns, option_format)
                assert_rows(config, [{"id": rid, "task": tasks[k], "caption": caption, "conversations": turns,
                                      "embedding": emb[k]}], dim)
                record = json.dumps({"id": rid, "caption": caption, "conversations": turns}, ensure_ascii=False)
                f.write((b",\n" if n else b"\n") + record.encode())
                pickles.add(rid, emb[k])
                n += 1
        f.write(b"\n]\n")
    return {"rows": n, "dim": dim, "json": f"{config}.json", "image_token_added": added}


def _transfer_info(src: str) -> dict[str, Any]:
    p = Path(src) / ARTIFACTS / TRANSFER
    return json.loads(p.read_text()) if p.exists() else {}


def _readme(result: dict[str, Any], transfer: dict[str, Any], mean_norm: float | None) -> str:
    dim = result["dim"]
    jsons = ", ".join(f"`{c}.json` ({v['rows']} records)" for c, v in result["configs"].items())
    method = transfer.get("method")
    if method == "mean-shift":
        shifted = (
            f"**Already mean-shifted**: each embedding is u - mu_T, mu_T being the mean of the L2-normalised "
            f"caption embeddings over {transfer.get('count')} captions of this build "
            f"(re-normalised after the shift: {transfer.get('renormalize')}). Do not subtract their "
            "`embed_mean.py` mean again."
        )
    else:
        shifted = (
            f"**Not mean-shifted** (transfer method: `{method}`). Their `embed_mean.py` takes the mean over "
            "all caption embeddings in float32 and subtracts it without re-normalising: run it over "
            f"`{EMBED_DIR}/` before training, as for their own release."
        )
    if mean_norm is not None:
        shifted += f" The mean of the exported embeddings has L2 norm {mean_norm:.4g}."
    encoder = transfer.get("encoder", {})
    enc_name = encoder.get("model_id") or encoder.get("encoder") or "unknown encoder"
    dim_note = (
        f"`mm_hidden_size 1280`: matches these {dim}-d embeddings ({enc_name})."
        if dim == TRAINER_DIM
        else f"`mm_hidden_size {dim}`: these embeddings are {dim}-d ({enc_name}), NOT the trainer's default "
        f"1280; the projector's input size must be set to {dim} (exported with --allow-dim-mismatch)."
    )
    return f"""# Export for the Unicorn authors' Bunny-based trainer

Written by `unicorn export --format bunny` from `{result["source"]}`.

- Data: {jsons}. Each record is `{{"id", "caption", "conversations"}}`; `<image>` opens the first
  human turn. Pretraining (projector only, "plain" template): `--data_path pretrain.json`;
  instruction tuning: `--data_path instruct.json`.
- Embeddings: the folder `{EMBED_DIR}/` ({len(result["pickles"])} pickle(s), {result["embeddings"]} ids,
  {result["embed_dtype"]}): point the trainer's embedding folder at it (their loader loads every `*.pkl`
  there and concatenates). Each entry is `{{"id": str, "embed": numpy array ({dim},)}}`, matched to the
  records by `str(id)`; instruction ids equal their caption ids, so the same folder serves both JSON files.
- Multiple-choice option lines: {result["option_format"]} (`A: text` is the authors' released data, `A. text`
  the paper's figure; `unicorn export --option-format` rewrites them).
- Model settings: {dim_note} Each vector is repeated as 576 image tokens (`<image>`) into an
  `mlp2x_gelu` projector (`--mm_projector_type mlp2x_gelu`).
- Mean: {shifted}
"""


def export_bunny(
    out_dir: str | os.PathLike[str],
    to_dir: str | os.PathLike[str],
    *,
    configs: Sequence[str] | None = DEFAULT_CONFIGS,
    chunk_size: int | None = DEFAULT_CHUNK,
    embed_dtype: str = "float32",
    missing_ok: bool = False,
    allow_dim_mismatch: bool = False,
    cache_dir: str | None = None,
    option_format: str | None = None,
) -> dict[str, Any]:
    """Write ``{config}.json``, ``embeds/embeds_*.pkl`` and ``README.md`` into ``to_dir``.

    ``configs=None`` exports whichever of pretrain/instruct exist. A requested config that the folder
    lacks is an error unless ``missing_ok`` (then it is listed under ``skipped``). ``embed_dtype``:
    float32 (default: what the trainer reads) or float16 (the authors' later, smaller format).
    Embeddings that are not 1280-d raise ``DimMismatch`` unless ``allow_dim_mismatch``. ``option_format``
    (None: as built) rewrites the MC option lines: ``"A:"`` as the authors' released data, ``"A."``.
    """
    from datasets import load_dataset

    t0 = time.monotonic()
    chunk = DEFAULT_CHUNK if chunk_size is None else chunk_size
    if chunk < 1:
        raise ValueError("chunk_size must be >= 1")
    if embed_dtype not in ("float32", "float16"):
        raise ValueError(f"embed_dtype must be float32 or float16, got {embed_dtype!r}")
    if option_format is not None and option_format not in OPTION_FORMATS:
        raise ValueError(f"option_format must be one of {', '.join(OPTION_FORMATS)}, got {option_format!r}")
    src = os.fspath(out_dir)
    if not Path(src).is_dir():
        raise FileNotFoundError(f"dataset folder not found: {src}")
    available = _available_configs(src)
    wanted = [c for c in DEFAULT_CONFIGS if c in available] if configs is None else list(configs)
    skipped = [c for c in wanted if c not in available]
    if skipped and not missing_ok and configs is not None:
        raise ValueError(f"{src} has no config(s) {', '.join(skipped)} (available: {', '.join(available)})")
    wanted = [c for c in wanted if c in available]
    if not wanted:
        raise ValueError(
            f"nothing to export from {src}: none of {list(configs or DEFAULT_CONFIGS)} present "
            f"(available: {', '.join(available)})"
        )
    data = {c: load_dataset(src, c, split="train", cache_dir=cache_dir) for c in wanted}
    # Records without their own caption column (instruct) get the Stage-1 caption of the same id.
    need = {str(i) for ds in data.values() if "caption" not in ds.column_names for i in ds["id"]}
    captions = _captions_by_id(src, need, cache_dir, available) if need else {}
    to = Path(to_dir)
    to.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"source": src, "to": str(to), "configs": {}, "skipped": skipped}
    # Staged inside the target and moved in once complete: a failure leaves an earlier export untouched.
    stage = Path(tempfile.mkdtemp(dir=to, prefix=".export-"))
    try:
        (stage / EMBED_DIR).mkdir()
        pickles = _Pickles(stage / EMBED_DIR, chunk, np.dtype(embed_dtype))
        # pretrain first: its embeddings cover every caption id; instruct adds only ids it lacks
        for config in sorted(wanted, key=lambda c: c != "pretrain"):
            result["configs"][config] = _write_config(
                data[config], config, stage, pickles, captions, allow_dim_mismatch, option_format
            )
        pickles.flush()
        dims = {v["dim"] for v in result["configs"].values() if v["dim"] is not None}
        if len(dims) > 1:
            raise ValueError(f"configs disagree on the embedding size: {sorted(dims)}")
        mean_norm = float(np.linalg.norm(pickles.total / len(pickles.ids))) if pickles.total is not None else None
        result["option_format"] = option_format or "as built"
        result.update(dim=dims.pop() if dims else None, pickles=[f"{EMBED_DIR}/{f}" for f in pickles.files],
                      embeddings=len(pickles.ids), embed_dtype=embed_dtype, embed_mean_norm=mean_norm)
        (stage / "README.md").write_text(_readme(result, _transfer_info(src), mean_norm), encoding="utf-8")
        swap_folder(stage / EMBED_DIR, to / EMBED_DIR)  # stale pickles would join the trainer's glob
        for name in ["README.md", *(v["json"] for v in result["configs"].values())]:
            os.replace(stage / name, to / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - t0, 3)
    return result
