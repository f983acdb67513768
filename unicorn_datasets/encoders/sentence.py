"""sentence-transformers folders: Transformer + Pooling (+ Normalize) with plain transformers, other
module stacks through the sentence_transformers package."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from unicorn_datasets.encoders.base import (
    Encoder,
    EncoderError,
    LoadOptions,
    _count_tokens,
    _load_model,
    _read_json,
    _tokenizer_limit,
    _torch,
)
from unicorn_datasets.encoders.sources import _config_sha256, _fingerprint

if TYPE_CHECKING:
    import torch


_NATIVE_ST_MODULES = {"Transformer", "Pooling", "Normalize"}


class _SentenceTransformerEncoder(Encoder):
    """sentence-transformers folder, Transformer + Pooling (+ Normalize) run with plain transformers."""

    family = "sentence-transformers"

    def __init__(self, folder: Path, opts: LoadOptions) -> None:
        modules = (
            _read_json(folder / "modules.json")
            if (folder / "modules.json").is_file()
            else [
                {"type": "sentence_transformers.models.Transformer", "path": ""},
                {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
            ]
        )
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        self.normalize_module = "Normalize" in kinds
        tr_path = folder / next(
            m.get("path", "") for m, k in zip(modules, kinds, strict=True) if k == "Transformer"
        )
        pool_path = next(
            (folder / m.get("path", "") for m, k in zip(modules, kinds, strict=True) if k == "Pooling"), None
        )
        st_cfg_file = tr_path / "sentence_bert_config.json"
        st_cfg = _read_json(st_cfg_file) if st_cfg_file.is_file() else {}
        pool_cfg = (
            _read_json(pool_path / "config.json")
            if pool_path and (pool_path / "config.json").is_file()
            else {}
        )
        self.pooling = self._pooling_mode(pool_cfg)
        device, max_length = opts.device, opts.max_length
        self.model, self.tokenizer, torch_dtype = _load_model(tr_path, opts)
        self.do_lower_case = bool(st_cfg.get("do_lower_case", False))
        limits = [
            n
            for n in (
                st_cfg.get("max_seq_length"),
                _tokenizer_limit(self.tokenizer),
                getattr(self.model.config, "max_position_embeddings", None),
            )
            if n
        ]
        model_limit = min(limits) if limits else 512
        if max_length is not None and max_length > model_limit:
            raise EncoderError(f"max_length={max_length} exceeds the model's limit of {model_limit} tokens")
        dim = int(pool_cfg.get("word_embedding_dimension") or self.model.config.hidden_size)
        info = {"pooling": self.pooling, "model_normalizes": self.normalize_module}
        info.update(opts.extra or {})
        super().__init__(
            spec=opts.spec,
            path=str(folder),
            dim=dim,
            max_length=max_length or model_limit,
            device=device,
            revision=opts.revision,
            fingerprint=_fingerprint(folder),
            config_sha256=_config_sha256(tr_path),
            dtype=str(torch_dtype).removeprefix("torch."),
            extra=info,
        )

    @staticmethod
    def _pooling_mode(cfg: dict[str, Any]) -> str:
        if not cfg:
            return "mean"  # sentence-transformers' own default
        modes = [
            m
            for m, key in (
                ("mean", "pooling_mode_mean_tokens"),
                ("cls", "pooling_mode_cls_token"),
                ("max", "pooling_mode_max_tokens"),
                ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens"),
                ("lasttoken", "pooling_mode_lasttoken"),
                ("weightedmean", "pooling_mode_weightedmean_tokens"),
            )
            if cfg.get(key)
        ]
        if len(modes) != 1 or modes[0] == "weightedmean":
            raise _NeedsSTPackage(f"pooling {modes or 'none'}")
        return modes[0]

    def _prep(self, texts: list[str]) -> list[str]:
        return [t.lower() for t in texts] if self.do_lower_case else texts

    def _token_lengths(self, texts: list[str]) -> list[int]:
        return _count_tokens(self.tokenizer, self._prep(texts))

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        torch = _torch()
        enc = self.tokenizer(
            self._prep(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "max":
            return hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        if self.pooling == "lasttoken":  # right padding: last real token sits at length-1
            last = enc["attention_mask"].sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return summed / (counts.sqrt() if self.pooling == "mean_sqrt_len" else counts)


class _NeedsSTPackage(Exception):
    """A sentence-transformers module stack this file does not reimplement."""


class _STPackageEncoder(Encoder):
    """Fallback through the sentence_transformers package for module stacks (Dense, CLIPModel ...)."""

    family = "sentence-transformers"
    backend = "sentence-transformers"

    def __init__(self, folder: Path, opts: LoadOptions, *, reason: str) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EncoderError(
                f"{folder} needs the sentence-transformers package ({reason}); "
                "pip install sentence-transformers"
            ) from e
        self.st = SentenceTransformer(str(folder), device=opts.device, trust_remote_code=opts.trust_remote_code)
        if opts.max_length is not None:
            self.st.max_seq_length = opts.max_length
        dim = self.st.get_sentence_embedding_dimension()
        if dim is None:
            raise EncoderError(f"cannot tell the embedding size of {folder}")
        info = {"fallback_reason": reason}
        info.update(opts.extra or {})
        super().__init__(
            spec=opts.spec,
            path=str(folder),
            dim=int(dim),
            max_length=int(self.st.max_seq_length or 512),
            device=opts.device,
            revision=opts.revision,
            fingerprint=_fingerprint(folder),
            config_sha256=_config_sha256(folder),
            dtype="float32",
            extra=info,
        )

    def _token_lengths(self, texts: list[str]) -> list[int]:
        return _count_tokens(self.st.tokenizer, texts)

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.st.encode(
            texts,
            batch_size=len(texts),
            convert_to_tensor=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )


def _load_sentence_transformer(folder: Path, opts: LoadOptions) -> Encoder:
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        kinds = {str(m.get("type", "")).rsplit(".", 1)[-1] for m in _read_json(modules_file)}
        unknown = kinds - _NATIVE_ST_MODULES
        if unknown or "Transformer" not in kinds:
            return _STPackageEncoder(folder, opts, reason=f"modules {sorted(kinds)}")
    try:
        return _SentenceTransformerEncoder(folder, opts)
    except _NeedsSTPackage as e:
        return _STPackageEncoder(folder, opts, reason=str(e))
