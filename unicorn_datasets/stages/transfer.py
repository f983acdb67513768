"""Stage 3: caption text embeddings become synthetic image embeddings (the `pretrain` config).

Pass 1 (`encode_batch`) writes the L2-normalised text embedding of each caption; the build
reduces per-shard float64 sums into the exact mean over ALL captions; pass 2 (`shift_batch`)
applies the transfer (mean-shift / c3 / none / a learned prior) and shapes the LLaVA pretraining row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from unicorn_datasets import prompts
from unicorn_datasets.randomness import row_seed, row_seeds
from unicorn_datasets.recipe import Recipe, TransferSection
from unicorn_datasets.text.tokens import IMAGE_TOKEN
from unicorn_datasets.transfer.methods import METHODS, apply_transfer

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
    prior: str | None = TransferSection.prior  # a `unicorn prior train` folder (method "prior")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"transfer.method = {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.method == "prior" and not self.prior:
            raise ValueError("transfer.method prior needs transfer.prior (a folder made by `unicorn prior train`)")
        if self.embedding_dtype not in DTYPES:
            raise ValueError(f"transfer.embedding_dtype = {self.embedding_dtype!r}: choose float16 or float32")

    @classmethod
    def from_recipe(cls, section: TransferSection) -> TransferConfig:
        return cls(**{k: getattr(section, k) for k in cls.__dataclass_fields__})

    def provenance(self, encoder_info: dict[str, Any], count: int, prior: Any = None) -> dict[str, Any]:
        return {
            "encoder": encoder_info,
            "method": self.method,
            "renormalize": self.renormalize if self.method == "mean-shift" else self.method == "c3",
            "noise_sigma": self.noise_sigma,
            "mean_over": "all accepted Stage-1 captions of this build",
            "count": count,
            "embedding_dtype": self.embedding_dtype,
        } | ({"prior": {"path": str(self.prior), **prior_provenance(prior)}} if prior is not None else {})

    def load_prior(self, encoder_info: dict[str, Any]) -> Any:
        """The fitted prior of method "prior" (refused if made for another encoder or dimension), else None."""
        if self.method != "prior":
            return None
        from unicorn_datasets.prior import check_encoder, load_prior

        prior = load_prior(str(self.prior))
        check_encoder(prior, encoder_info)
        return prior


def prior_provenance(prior: Any) -> dict[str, Any]:
    """What the manifest and card say about a prior: where, which, trained on what, and its own evaluation."""
    cfg = prior.config()
    training = {k: v for k, v in (cfg.get("training") or {}).items() if k != "val_loss_history"}
    return {k: cfg.get(k) for k in ("family", "dim", "hyper", "training_data", "weights_sha256", "comparison")} | {
        "training": training, "evaluation": prior.evaluation}


def with_prior_identity(recipe: Recipe) -> Recipe:
    """--transfer prior: load the prior before any work (a bad folder fails first) and add its weight hash to
    the recipe, so a build resumed with a retrained prior in the same folder is refused like any other change."""
    t = recipe.transfer
    if t.method != "prior" or "pretrain" not in recipe.stages:
        return recipe
    from unicorn_datasets.prior import load_prior

    prior = load_prior(str(t.prior))
    check_against_mean_shift(prior, str(t.prior), allow_worse=t.allow_worse_prior)
    return dataclasses.replace(recipe, transfer=dataclasses.replace(t, prior_sha256=prior.weights_sha256()))


def check_against_mean_shift(prior: Any, folder: str, *, allow_worse: bool) -> None:
    """A prior that lost to the mean shift on its own validation pairs would make Stage 3 worse than training
    none: refused unless allowed (then a warning); a prior without that record gets a warning."""
    import sys

    from unicorn_datasets.prior.base import PriorError

    cmp = prior.meta.get("comparison")
    if not cmp:
        print(f"unicorn: warning: the prior {folder} records no comparison with the mean shift (trained before "
              "it was recorded); retrain it with `unicorn prior train` to know whether it helps", file=sys.stderr)
    elif cmp.get("worse_than_mean_shift"):
        msg = (f"the prior {folder} lost to the mean shift on its validation pairs (paired cosine "
               f"{cmp['families'][cmp['chosen']]:.3f} vs {cmp['mean_shift']:.3f}): Stage 3 would be worse than "
               "--transfer mean-shift")
        if not allow_worse:
            raise PriorError(f"{msg}; use --transfer mean-shift, retrain on more pairs, or pass "
                             "--allow-worse-prior (transfer.allow_worse_prior) to use it anyway")
        print(f"unicorn: warning: {msg}; used anyway (--allow-worse-prior)", file=sys.stderr)


def describe_instructions() -> list[str]:
    return [line.strip() for line in prompts.load("describe_instructions.txt").splitlines() if line.strip()]


def encode_batch(batch: dict[str, list], *, encoder: Any, cfg: TransferConfig) -> dict[str, list]:
    captions = list(batch["caption"])
    emb = encoder.encode_text(captions, batch_size=cfg.batch_size)
    # truncated: the caption was longer than the encoder's token limit (its tail did not count)
    return {**batch, "text_embedding": emb.astype(np.float32), "truncated": encoder.truncated_mask(captions).tolist()}


def shift_batch(batch: dict[str, list], *, mean: np.ndarray, cfg: TransferConfig, build_seed: int,
                prior: Any = None) -> dict[str, list]:
    ids = list(batch["id"])
    emb = np.asarray(batch["text_embedding"], dtype=np.float32)
    out = apply_transfer(
        emb,
        cfg.method,
        mean=mean,
        renormalize=cfg.renormalize,
        noise_sigma=cfg.noise_sigma,
        rng_seed_per_row=row_seeds(ids, build_seed, stream=cfg.method) if cfg.method in ("c3", "prior") else None,
        prior=prior,
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
