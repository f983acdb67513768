"""CLIP / SigLIP / SigLIP2 dual encoders (text and image towers) through transformers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from unicorn_datasets.encoders.base import (
    Encoder,
    EncoderError,
    LoadOptions,
    _count_tokens,
    _features,
    _load_model,
    _read_json,
    _tokenizer_limit,
    _torch,
)
from unicorn_datasets.encoders.sources import _config_sha256, _fingerprint

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image as PILImage

_DUAL_FAMILIES = ("clip", "siglip", "siglip2")


class _DualEncoder(Encoder):
    """CLIP / SigLIP family through transformers AutoModel."""

    supports_images = True

    def __init__(
        self,
        folder: Path,
        family: str,
        opts: LoadOptions,
    ) -> None:
        from transformers import AutoImageProcessor

        cfg = _read_json(folder / "config.json")
        device, max_length = opts.device, opts.max_length
        self.model, self.tokenizer, torch_dtype = _load_model(folder, opts)
        try:
            self.image_processor = AutoImageProcessor.from_pretrained(
                folder, trust_remote_code=opts.trust_remote_code
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
            spec=opts.spec,
            path=str(folder),
            dim=self._probe_dim(family),
            max_length=limit,
            device=device,
            revision=opts.revision,
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
