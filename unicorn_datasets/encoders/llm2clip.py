"""LLM2CLIP, the Unicorn paper's encoder (custom model code; needs trust_remote_code=True)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from unicorn_datasets.encoders.base import Encoder, EncoderError, LoadOptions, _count_tokens, _dtype, _features, _torch
from unicorn_datasets.encoders.sources import _config_sha256, _fingerprint, _resolve

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image as PILImage

LLM2CLIP_DEFAULT_CLIP = "microsoft/LLM2CLIP-Openai-L-14-336"
LLM2CLIP_DEFAULT_LLM = "microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned"
# The LLM2CLIP-Openai card takes its image preprocessing from the original OpenAI checkpoint.
LLM2CLIP_DEFAULT_IMAGE_PROCESSOR = "openai/clip-vit-large-patch14-336"
LLM2CLIP_MAX_LENGTH = 512


def _is_llm2clip_config(cfg: dict[str, Any]) -> bool:
    names = list(cfg.get("architectures") or []) + [str(v) for v in (cfg.get("auto_map") or {}).values()]
    return any("llm2clip" in n.lower() for n in names)


def one_half_error(folder: Path, have: str, missing: str, form: str, model_type: str | None = None) -> str:
    """LLM2CLIP is two checkpoints; a folder holding one of them is refused with the form that loads both."""
    what = f"an LLM (model_type {model_type!r})" if model_type else f"the {have} half of LLM2CLIP"
    return (f"{folder} is {what}: LLM2CLIP's text side needs both halves, the {missing} half is missing. Use "
            f"--encoder {form} (CLIP half e.g. {LLM2CLIP_DEFAULT_CLIP}, LLM half e.g. {LLM2CLIP_DEFAULT_LLM}; "
            "folders or Hub ids) with --trust-remote-code")


def _trust_error(what: str) -> EncoderError:
    return EncoderError(
        f"{what} is LLM2CLIP, which runs custom model code downloaded with the model. "
        "Pass --trust-remote-code (trust_remote_code=True) if you trust microsoft/LLM2CLIP-*; "
        "it is never enabled by default."
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
        opts: LoadOptions,
    ) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPImageProcessor

        clip_dir, clip_rev = _resolve(clip_spec)
        llm_dir, llm_rev = _resolve(llm_spec)
        device = opts.device
        torch_dtype = _dtype(opts.dtype, "bfloat16" if str(device).startswith("cuda") else "float32")
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
            spec=opts.spec,
            path=f"{clip_dir},{llm_dir}",
            dim=dim,
            max_length=opts.max_length or LLM2CLIP_MAX_LENGTH,
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
