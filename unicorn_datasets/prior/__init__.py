"""Learned text -> image-embedding priors (Synth²'s generator in a continuous embedding space).

`make_prior(family, **hyper)` -> an unfitted prior; `load_prior(folder)` -> a fitted one;
`check_encoder(prior, encoder_info)` refuses a prior trained for another encoder or dimension.
Families: `linear` (ridge shrunk toward the mean shift, closed form), `orthogonal` (Procrustes rotation plus
a scale, closed form) and `flow` (that ridge mean + a conditional rectified-flow MLP).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unicorn_datasets.prior.base import CONFIG, EVAL, FORMAT, WEIGHTS, Prior, PriorError
from unicorn_datasets.prior.flow import FlowPrior
from unicorn_datasets.prior.linear import LinearPrior, OrthogonalPrior

FAMILIES: dict[str, type[Prior]] = {"linear": LinearPrior, "orthogonal": OrthogonalPrior, "flow": FlowPrior}

__all__ = ["FAMILIES", "Prior", "PriorError", "check_encoder", "load_prior", "make_prior"]


def make_prior(family: str, **hyper: Any) -> Prior:
    if family not in FAMILIES:
        raise PriorError(f"unknown prior family {family!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[family](**hyper)


def load_prior(folder: str | os.PathLike[str]) -> Prior:
    """Read a prior folder (config.json + weights.safetensors [+ eval.json]); one clear error if it is not one."""
    from safetensors.numpy import load_file

    root = Path(folder)
    if not (root / CONFIG).is_file() or not (root / WEIGHTS).is_file():
        raise PriorError(f"{root} is not a prior folder (needs {CONFIG} and {WEIGHTS}; make one with "
                         "`unicorn prior train`)")
    try:
        config = json.loads((root / CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(str(root / WEIGHTS))
    except Exception as e:  # corrupt JSON or safetensors: one line, not a traceback
        raise PriorError(f"cannot read the prior in {root}: {e}") from e
    if config.get("format") != FORMAT or config.get("family") not in FAMILIES:
        raise PriorError(f"{root}: unsupported prior (format {config.get('format')!r}, "
                         f"family {config.get('family')!r}); expected {FORMAT} with one of {', '.join(FAMILIES)}")
    prior = make_prior(config["family"], **config.get("hyper", {}))
    prior.text_mean, prior.image_mean = tensors.pop("text_mean"), tensors.pop("image_mean")
    prior._restore(tensors)
    prior.meta = {k: v for k, v in config.items() if k in ("encoder", "training_data", "training", "image_dim",
                                                             "comparison")}
    if (root / EVAL).is_file():
        prior.evaluation = json.loads((root / EVAL).read_text(encoding="utf-8"))
    if prior.weights_sha256() != config.get("weights_sha256"):
        raise PriorError(f"{root}: the weights do not match the hash in {CONFIG} (a partial copy or an edit)")
    return prior


def check_encoder(prior: Prior, encoder_info: dict[str, Any]) -> None:
    """Refuse a prior trained for another encoder (content fingerprint, else path/spec) or dimension."""
    mine = prior.meta.get("encoder") or {}
    dim = encoder_info.get("dim")
    if dim is not None and int(dim) != prior.dim:
        raise PriorError(f"the prior maps {prior.dim}-d text embeddings but encoder "
                         f"{encoder_info.get('encoder')!r} gives {dim}-d; train a prior for this encoder")
    for key in ("fingerprint", "path", "encoder"):  # the strongest identity both sides record
        if mine.get(key) and encoder_info.get(key):
            if mine[key] != encoder_info[key]:
                raise PriorError(f"the prior was trained for encoder {mine.get('encoder')!r} ({key} {mine[key]}), "
                                 f"this build uses {encoder_info.get('encoder')!r} ({key} {encoder_info[key]}); "
                                 "train a prior for this encoder")
            return
    raise PriorError("the prior records no encoder identity; retrain it with `unicorn prior train --encoder ...`")
