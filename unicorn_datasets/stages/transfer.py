"""Stage 3: caption text embeddings become synthetic image embeddings (the `pretrain` config).

Pass 1 (`encode_batch`) writes the L2-normalised text embedding of each caption; the build
reduces per-shard float64 sums into the exact mean over ALL captions; pass 2 (`shift_batch`)
applies the transfer (mean-shift / c3 / none / a learned prior) and shapes the LLaVA pretraining row.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from unicorn_datasets import prompts
from unicorn_datasets.dataset.atomic import atomic_path, write_text
from unicorn_datasets.dataset.layout import ENCODER, TEXT_MEAN, TRANSFER, artifact
from unicorn_datasets.dataset.markdown import markdown_table
from unicorn_datasets.randomness import row_seed, row_seeds
from unicorn_datasets.recipe import Recipe, TransferSection
from unicorn_datasets.text.tokens import IMAGE_TOKEN
from unicorn_datasets.transfer.methods import apply_transfer

if TYPE_CHECKING:
    from unicorn_datasets.dataset.repo import BuildRepo

DTYPES = {"float16": np.float16, "float32": np.float32}


def transfer_provenance(cfg: TransferSection, encoder_info: dict[str, Any], count: int,
                        prior: Any = None) -> dict[str, Any]:
    """What the manifest and card say about Stage 3's transfer."""
    return {
        "encoder": encoder_info,
        "method": cfg.method,
        "renormalize": cfg.renormalize if cfg.method == "mean-shift" else cfg.method == "c3",
        "noise_sigma": cfg.noise_sigma,
        "mean_over": "all accepted Stage-1 captions of this build",
        "count": count,
        "embedding_dtype": cfg.embedding_dtype,
    } | ({"prior": {"path": str(cfg.prior), **prior_provenance(prior)}} if prior is not None else {})


def load_stage_prior(cfg: TransferSection, encoder_info: dict[str, Any]) -> Any:
    """The fitted prior of method "prior" (refused if made for another encoder or dimension), else None."""
    if cfg.method != "prior":
        return None
    from unicorn_datasets.prior import check_encoder, load_prior

    prior = load_prior(str(cfg.prior))
    check_encoder(prior, encoder_info)
    return prior


def prior_provenance(prior: Any) -> dict[str, Any]:
    """What the manifest and card say about a prior: where, which, trained on what, and its own evaluation."""
    cfg = prior.config()
    training = {k: v for k, v in (cfg.get("training") or {}).items() if k != "val_loss_history"}
    return {k: cfg.get(k) for k in ("family", "dim", "hyper", "training_data", "weights_sha256")} | {
        "training": training, "evaluation": prior.evaluation}


def with_prior_identity(recipe: Recipe) -> Recipe:
    """--transfer prior: load the prior before any work (a bad folder fails first) and add its weight hash to
    the recipe, so a build resumed with a retrained prior in the same folder is refused like any other change."""
    t = recipe.transfer
    if t.method != "prior" or "pretrain" not in recipe.stages:
        return recipe
    from unicorn_datasets.prior import load_prior

    sha = load_prior(str(t.prior)).weights_sha256()
    return dataclasses.replace(recipe, transfer=dataclasses.replace(t, prior_sha256=sha))


def save_transfer_artifacts(repo: BuildRepo, mean: np.ndarray, info: dict[str, Any]) -> None:
    """The exact text mean (float64) and the transfer's provenance in artifacts/, the encoder's in the work area."""
    art = repo.artifacts()
    with atomic_path(art / TEXT_MEAN) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(mean, dtype=np.float64))
    write_text(
        art / TRANSFER,
        json.dumps(
            {**info, "mean_file": artifact(TEXT_MEAN), "mean_dtype": "float64", "dim": int(mean.shape[0])},
            indent=2,
        ),
    )
    write_text(repo.work / ENCODER, json.dumps(info.get("encoder", {})))


def prior_card_text(prior: dict[str, Any] | None) -> str:
    """The learned prior a build used, and its own held-out evaluation beside the zero-parameter transfers."""
    if not prior:
        return ""
    data = prior.get("training_data") or {}
    ev = prior.get("evaluation") or {}
    text = (f"\n\n   The image embeddings come from a learned **{prior.get('family')} prior** (`{prior.get('path')}`, "
            f"weights `{prior.get('weights_sha256')}`) trained on {data.get('n_pairs')} caption/image pairs "
            f"(`{data.get('source')}`, data `{data.get('fingerprint')}`).")
    methods = ev.get("methods") or {}
    if methods:
        rows = [(m, f"{r['paired_cosine']:.3f}", f"{r['recall@1']:.3f}", f"{r['recall@5']:.3f}", f"{r['frechet']:.4f}")
                for m, r in methods.items()]
        text += (f" On {ev.get('n')} held-out pairs ({ev.get('split', 'held out')}), against the real image "
                 "embeddings minus their mean:\n\n"
                 + markdown_table(rows, ("method", "paired cosine", "recall@1", "recall@5", "Fréchet distance")))
    return text


def describe_instructions() -> list[str]:
    return [line.strip() for line in prompts.load("describe_instructions.txt").splitlines() if line.strip()]


def encode_batch(batch: dict[str, list], *, encoder: Any, cfg: TransferSection) -> dict[str, list]:
    captions = list(batch["caption"])
    emb = encoder.encode_text(captions, batch_size=cfg.batch_size)
    # truncated: the caption was longer than the encoder's token limit (its tail did not count)
    return {**batch, "text_embedding": emb.astype(np.float32), "truncated": encoder.truncated_mask(captions).tolist()}


def shift_batch(batch: dict[str, list], *, mean: np.ndarray, cfg: TransferSection, build_seed: int,
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
