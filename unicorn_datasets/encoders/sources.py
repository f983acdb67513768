"""Model folders: Hub id resolution, revisions and content fingerprints (provenance)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from unicorn_datasets.encoders.base import EncoderError

_HUB_IGNORE = [
    "*.msgpack",
    "*.h5",
    "*.ot",
    "*.onnx",
    "onnx/*",
    "openvino/*",
    "flax_model*",
    "tf_model*",
    "rust_model*",
    "*.gguf",
]


def _fingerprint(folder: Path) -> str:
    """Cheap content fingerprint of a model folder: names, sizes, and head/tail bytes of every file.

    Hashing full multi-GB weights is too slow; head+tail+size catches any re-save or different init.
    """
    h = hashlib.sha256()
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(p, "rb") as f:
            h.update(f.read(65536))
            if size > 131072:
                f.seek(-65536, os.SEEK_END)
                h.update(f.read())
    return "sha256:" + h.hexdigest()


def _config_sha256(folder: Path) -> str | None:
    cfg = folder / "config.json"
    return "sha256:" + hashlib.sha256(cfg.read_bytes()).hexdigest() if cfg.is_file() else None


def _revision_from_path(folder: Path) -> str | None:
    # Hub cache layout: .../models--org--name/snapshots/<commit>/
    m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", folder.resolve().as_posix() + "/")
    if m is None:
        m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", folder.as_posix() + "/")
    return m.group(1) if m else None


def _resolve(spec: str) -> tuple[Path, str | None]:
    """Local folder as is; otherwise download a Hub snapshot (online, or from the local cache)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p, _revision_from_path(p)
    if p.exists():
        raise EncoderError(f"encoder spec {spec!r} is a file; expected a model folder or a Hub id")
    repo, _, rev = spec.partition("@")
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", repo):
        raise EncoderError(f"encoder spec {spec!r} is neither an existing folder nor a Hub model id")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id=repo, revision=rev or None, ignore_patterns=_HUB_IGNORE))
    except Exception as e:  # offline, missing repo, gated ...: one clear message
        raise EncoderError(f"could not find encoder {spec!r} as a local folder or on the Hub: {e}") from e
    return folder, _revision_from_path(folder) or (rev or None)
