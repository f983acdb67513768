"""Per-concept counts of a build (label and domain columns of the captions config) and Synth²'s figures.

Synth² writes one caption per class name drawn from a large vocabulary, so its balance is by concept; the
cluster figures (top-5 share, entropy of cluster sizes) are its published measure. Its embedding model and
k are not published (reference/synth2.md), so no setting here is known to match: the figures are shown
beside ours as a reference, never as a like-for-like comparison.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

# Synth² (arXiv 2403.07750): k-means over caption embeddings; share of the 5 largest clusters and the
# entropy of cluster sizes (nats) of their synthetic captions, and the top-5 share of real caption sets
SYNTH2 = {
    "top5_share": 0.577,
    "entropy": 3.81,
    "real_sets_top5_share": [0.698, 0.830],
    "comparable": False,
    "why": "Synth² published neither its embedding model nor k; an entropy of 3.81 nats needs k >= 46 "
           "(ln 46 = 3.83), so only builds clustered with k >= 46 can reach it",
}
CONCEPT_COLUMNS = ("domain", "label")  # the order balanced selection spreads by: domain, then label
HISTOGRAM_TOP = 50  # concepts listed by name (all are counted)


def concept_stats(values: Iterable[str | None]) -> dict[str, Any]:
    """Counts per concept (rows without one are counted apart), top-5 share and normalised entropy."""
    counts = Counter(v for v in values if v)
    total = sum(counts.values())
    out: dict[str, Any] = {"concepts": len(counts), "rows": total}
    if not total:
        return {**out, "top5_share": None, "entropy": None, "entropy_normalised": None, "counts": {}}
    sizes = sorted(counts.values(), reverse=True)
    p = [s / total for s in sizes]
    entropy = -sum(x * math.log(x) for x in p)
    out.update(top5_share=sum(sizes[:5]) / total, entropy=entropy,
               entropy_normalised=entropy / math.log(len(sizes)) if len(sizes) > 1 else 0.0,
               counts=dict(counts.most_common(HISTOGRAM_TOP)))
    return out


def concept_report(columns: dict[str, list[str | None]], n_rows: int) -> dict[str, Any]:
    """Stats per concept column present (domain, label); a note when the captions carry none."""
    out: dict[str, Any] = {}
    for name in CONCEPT_COLUMNS:
        if name in columns:
            st = concept_stats(columns[name])
            st["unlabelled"] = n_rows - st["rows"]
            out[name] = st
    if not out:
        out["why"] = "the captions config has no domain or label column (seeds without concept labels)"
    return out
