"""Encoder base class, load options, errors and the torch/tokenizer helpers every family shares."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # heavy imports stay lazy: `unicorn --help` must not pay for torch
    import torch
    from PIL.Image import Image as PILImage


class EncoderError(ValueError):
    """Bad encoder spec, unsupported model, or an operation the encoder cannot do."""


@dataclass(frozen=True)
class LoadOptions:
    """What every encoder constructor needs besides its model folder(s).

    ``spec`` is the user's encoder spec (recorded as provenance), ``revision`` the resolved revision,
    ``dtype``/``max_length`` the user's overrides (``None``: the family's default), ``extra`` more
    provenance merged into ``describe()``.
    """

    spec: str
    revision: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    max_length: int | None = None
    trust_remote_code: bool = False
    extra: dict[str, Any] | None = None


def _torch() -> Any:
    import torch

    return torch


def _dtype(name: str | None, default: str) -> torch.dtype:
    torch = _torch()
    name = name or default
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if name not in table:
        raise EncoderError(f"unknown dtype {name!r}; use one of float32, float16, bfloat16")
    return table[name]


def _features(out: Any) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose pooler_output holds the projected features;
    # transformers 4 and custom (remote) code return the tensor itself.
    torch = _torch()
    if isinstance(out, torch.Tensor):
        return out
    for key in ("pooler_output", "text_embeds", "image_embeds"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise EncoderError(f"cannot read features from model output of type {type(out).__name__}")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of a float32 array (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _normalize(x: torch.Tensor) -> np.ndarray:
    torch = _torch()
    x = torch.nn.functional.normalize(x.float(), p=2, dim=-1)
    return x.cpu().numpy().astype(np.float32, copy=False)


def _load_model(path: Path, opts: LoadOptions) -> tuple[Any, Any, torch.dtype]:
    """AutoModel (on ``opts.device``, in eval mode) and AutoTokenizer from one folder, and the torch dtype."""
    from transformers import AutoModel, AutoTokenizer

    torch_dtype = _dtype(opts.dtype, "float32")
    model = (
        AutoModel.from_pretrained(path, dtype=torch_dtype, trust_remote_code=opts.trust_remote_code)
        .to(opts.device)
        .eval()
    )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=opts.trust_remote_code)
    return model, tokenizer, torch_dtype


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EncoderError(f"cannot read {path}: {e}") from e


class Encoder:
    """Base class: batching, length sorting, truncation accounting, normalisation.

    Subclasses implement ``_token_lengths`` and ``_embed_text_batch`` (and ``_embed_image_batch`` when
    ``supports_images``). Attributes: ``dim``, ``family``, ``max_length`` (token limit for text),
    ``truncated`` (texts cut by the token limit, accumulated over calls). ``truncated_mask(texts)`` says which
    texts of a call the limit cuts, without state left between calls.
    """

    family: str = ""
    backend: str = "transformers"
    supports_images: bool = False

    def __init__(
        self,
        *,
        spec: str,
        path: str,
        dim: int,
        max_length: int,
        device: str,
        revision: str | None,
        fingerprint: str | None,
        config_sha256: str | None,
        dtype: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.path = path
        self.dim = int(dim)
        self.max_length = int(max_length)
        self.device = device
        self.revision = revision
        self.fingerprint = fingerprint
        self.config_sha256 = config_sha256
        self.dtype = dtype
        self.extra = dict(extra or {})
        self.truncated = 0

    def describe(self) -> dict[str, Any]:
        """Provenance for the card/manifest (device excluded: it must not change row identity)."""
        d: dict[str, Any] = {
            "encoder": self.spec,
            "path": self.path,
            "family": self.family,
            "backend": self.backend,
            "revision": self.revision,
            "fingerprint": self.fingerprint,
            "config_sha256": self.config_sha256,
            "dim": self.dim,
            "max_length": self.max_length,
            "dtype": self.dtype,
            "normalized": True,
        }
        d.update(self.extra)
        return d

    # -- hooks ---------------------------------------------------------------------------------
    def _token_lengths(self, texts: list[str]) -> list[int]:
        raise NotImplementedError

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def _embed_image_batch(self, images: list[PILImage]) -> torch.Tensor:
        raise NotImplementedError

    # -- public --------------------------------------------------------------------------------
    def truncated_mask(self, texts: Sequence[str]) -> np.ndarray:
        """Per text, in input order: longer than ``max_length`` tokens (its tail does not count)."""
        texts = list(texts)
        return np.asarray(self._token_lengths(texts), dtype=np.int64) > self.max_length if texts else np.zeros(0, bool)

    def encode_text(self, texts: Sequence[str], batch_size: int = 64, progress: str | None = None) -> np.ndarray:
        """Encode texts -> float32 [N, dim], rows L2-normalised, input order.

        Longest texts go first and batches hold similar lengths (less padding); the output is put back
        in input order. Texts longer than ``max_length`` tokens are truncated and counted. `progress`: the
        label of a progress bar (texts encoded) on stderr; None draws none.
        """
        texts = list(texts)
        if batch_size < 1:
            raise EncoderError("batch_size must be >= 1")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise EncoderError(f"text at position {i} is {type(t).__name__}, expected str")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        lengths = self._token_lengths(texts)
        self.truncated += int((np.asarray(lengths) > self.max_length).sum())
        order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        torch = _torch()
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc=progress, unit="text", file=sys.stderr, dynamic_ncols=True,
                   disable=progress is None)
        with torch.inference_mode(), bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                feats = _normalize(self._embed_text_batch([texts[i] for i in idx]))
                if feats.shape != (len(idx), self.dim):
                    raise EncoderError(
                        f"encoder returned shape {feats.shape}, expected {(len(idx), self.dim)}"
                    )
                out[idx] = feats
                bar.update(len(idx))
        return out

    def encode_images(self, images: Sequence[PILImage], batch_size: int = 32) -> np.ndarray:
        """Encode PIL images with the image tower -> float32 [N, dim], rows L2-normalised."""
        if not self.supports_images:
            raise EncoderError(
                f"encoder {self.spec!r} ({self.family}) is text-only; use a CLIP/SigLIP/LLM2CLIP model "
                "to embed images"
            )
        images = list(images)
        if batch_size < 1:
            raise EncoderError("batch_size must be >= 1")
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        torch = _torch()
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = [
                    im.convert("RGB") if im.mode != "RGB" else im for im in images[start : start + batch_size]
                ]
                out[start : start + len(batch)] = _normalize(self._embed_image_batch(batch))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, dim={self.dim}, path={self.path!r})"


def _tokenizer_limit(tokenizer: Any) -> int | None:
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < 1_000_000 else None


def _count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    from transformers.utils import logging as hf_logging

    # Untruncated lengths (special tokens included): sort key and truncation count. The
    # "sequence longer than model max" warning is expected here, so silence it.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        ids = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    finally:
        hf_logging.set_verbosity(verbosity)
    return [len(x) for x in ids]
