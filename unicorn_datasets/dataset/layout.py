"""The folder layout of a build: every name inside a dataset folder (OUT), in one place.

OUT is a Hub dataset repository: the card, one folder per config, `artifacts/` (pushed) and the
work area `.build/` (never pushed: state, lock, per-stage shard parts, journals).
"""

from __future__ import annotations

CARD = "README.md"
CONFIGS = ("captions", "instruct", "pretrain")  # one folder per config; also the stage names, in build order
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
JOURNAL = "journal"
COMPLETE = "COMPLETE"  # in .build/STAGE/: the stage is assembled

OUR_FILES = frozenset({CARD, WORK, ARTIFACTS, *CONFIGS})  # what a build may write or replace in OUT


def artifact(name: str) -> str:
    """`artifacts/NAME`, relative to OUT: for messages, the card and the manifest."""
    return f"{ARTIFACTS}/{name}"
