"""Stage 3: caption text embeddings become synthetic image embeddings (the `pretrain` config).

Pass 1 (`encode_batch`) writes the L2-normalised text embedding of each caption; the build
reduces per-shard float64 sums into the exact mean over ALL captions; pass 2 (`shift_batch`)
applies the transfer (mean-shift / c3 / none) and shapes the LLaVA pretraining row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import prompts
from ..recipe import TransferSection
from ..seeding import row_seed, row_seeds
from ..transfer import METHODS, apply_transfer

IMAGE_TOKEN = "<image>"
DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class TransferConfig:
    # defaults: the recipe's (one default per key, in recipe.py)
    encoder: str = TransferSection.encoder
    method: str = TransferSection.method
    renormalize: bool = TransferSection.renormalize  # released code: no; paper v2: yes
    noise_sigma: float = TransferSection.noise_sigma
    embedding_dtype: str = TransferSection.embedding_dtype
    batch_size: int = TransferSection.batch_size

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"transfer.method = {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.embedding_dtype not in DTYPES:
            raise ValueError(f"transfer.embedding_dtype = {self.embedding_dtype!r}: choose float16 or float32")

    @classmethod
    def from_recipe(cls, section: TransferSection) -> TransferConfig:
        return cls(**{k: getattr(section, k) for k in cls.__dataclass_fields__})

    def provenance(self, encoder_info: dict[str, Any], count: int) -> dict[str, Any]:
        return {
            "encoder": encoder_info,
            "method": self.method,
            "renormalize": self.renormalize if self.method == "mean-shift" else self.method == "c3",
            "noise_sigma": self.noise_sigma,
            "mean_over": "all accepted Stage-1 captions of this build",
            "count": count,
            "embedding_dtype": self.embedding_dtype,
        }


def describe_instructions() -> list[str]:
    return [line.strip() for line in prompts.load("describe_instructions.txt").splitlines() if line.strip()]


def encode_batch(batch: dict[str, list], *, encoder: Any, cfg: TransferConfig) -> dict[str, list]:
    captions = list(batch["caption"])
    emb = encoder.encode_text(captions, batch_size=cfg.batch_size)
    # truncated: the caption was longer than the encoder's token limit (its tail did not count)
    return {**batch, "text_embedding": emb.astype(np.float32), "truncated": encoder.truncated_mask(captions).tolist()}


def shift_batch(batch: dict[str, list], *, mean: np.ndarray, cfg: TransferConfig, build_seed: int) -> dict[str, list]:
    ids = list(batch["id"])
    emb = np.asarray(batch["text_embedding"], dtype=np.float32)
    out = apply_transfer(
        emb,
        cfg.method,
        mean=mean,
        renormalize=cfg.renormalize,
        noise_sigma=cfg.noise_sigma,
        rng_seed_per_row=row_seeds(ids, build_seed, stream="c3") if cfg.method == "c3" else None,
    )
    phrasings = describe_instructions()
    asks = [phrasings[row_seed(build_seed, rid, stream="describe") % len(phrasings)] for rid in ids]
    conversations = [
        [{"from": "human", "value": f"{IMAGE_TOKEN}\n{ask}"}, {"from": "gpt", "value": caption}]
        for ask, caption in zip(asks, batch["caption"])
    ]
    return {
        "id": ids,
        "caption": list(batch["caption"]),
        "conversations": conversations,
        "embedding": out.astype(DTYPES[cfg.embedding_dtype]),
    }
