"""The folder layout of a build: every fixed name inside a dataset folder (OUT), in one place (each config
folder is named by its stage: `StageSpec.config`).

OUT is a Hub dataset repository: the card, one folder per config, `artifacts/` (pushed) and the
work area `.build/` (never pushed: state, lock, per-stage shard parts, journals).
"""

from __future__ import annotations

CARD = "README.md"
ARTIFACTS = "artifacts"
WORK = ".build"

# in artifacts/
MANIFEST = "build_manifest.json"
REJECTIONS = "rejections.parquet"
TEXT_MEAN = "text_mean.npy"
TRANSFER = "transfer.json"
REPORT = "report.json"
SEED_CLUSTERS = "seed_clusters.parquet"  # --balance: every available seed's cluster and which draw kept it

# in .build/
STATE = "state.json"
LOCK = "lock"
ENCODER = "encoder.json"
LLM = "llm.json"  # the loaded LLM's description, for a later run that finishes without loading it
ENCODE = "encode"  # Stage 3's first pass (text embeddings): its parts' folder
ENCODE_SUMS = "encode_sums"  # Stage 3's per-shard float64 sums of the text embeddings
JOURNAL = "journal"
STAGING = "staging"  # a config being written, swapped into OUT when complete
NEAR_DUP = "near_dup"  # the near-duplicate filter's MinHash signature parts
COMPLETE = "COMPLETE"  # in .build/STAGE/: the stage is assembled

OUR_FILES = frozenset({CARD, WORK, ARTIFACTS})  # what a build may write or replace in OUT, besides its configs
CONFIG_FILES = "train-*.parquet"  # in OUT/CONFIG/: a folder holding these is a config the build published


def artifact(name: str) -> str:
    """`artifacts/NAME`, relative to OUT: for messages, the card and the manifest."""
    return f"{ARTIFACTS}/{name}"
