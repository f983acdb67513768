"""`unicorn report A B`: two builds' diversity on the same k and encoder, side by side.

A's settings (its recipe's report.k and encoder) are used for both unless --k / --encoder say otherwise,
so a difference in the numbers comes from the captions, not from the clustering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unicorn_datasets.analysis.report import build_settings, report

HEADLINE = ("n_captions", "top5_share", "entropy", "entropy_normalised")


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    c = r["clustering"]
    out = {key: r.get(key) for key in HEADLINE}
    out.update(status=c.get("status"), ttr=r["text"].get("ttr_mean_per_caption"))
    if c.get("status") != "ok":
        out["why"] = c.get("why")
    for name, st in (r.get("concepts") or {}).items():
        if isinstance(st, dict):
            out[f"{name}_concepts"] = {k: st.get(k) for k in ("concepts", "top5_share", "entropy_normalised")}
    return out


def compare_builds(a: str | Path, b: str | Path, *, k: int | None = None, encoder: str | None = None,
                   embeddings: str = "text", seed: int = 0) -> dict[str, Any]:
    sa, sb = build_settings(Path(a)), build_settings(Path(b))
    k, encoder = k or sa["k"], encoder or sa["encoder"]
    ra = report(a, k=k, encoder=encoder, embeddings=embeddings, seed=seed, write=False)
    rb = report(b, k=k, encoder=encoder, embeddings=embeddings, seed=seed, write=False)
    c = ra["clustering"]
    out: dict[str, Any] = {"k": k, "encoder": c["embeddings"], "clustered": c["clustered"],
                           "a": {"folder": str(a), **_summary(ra)}, "b": {"folder": str(b), **_summary(rb)}}
    if (sb["k"], sb["encoder"]) != (sa["k"], sa["encoder"]):
        out["note"] = (f"{b} was built with report.k={sb['k']}, encoder {sb['encoder']!r}; both are measured here "
                       f"with k={k}, encoder {encoder!r}")
    out["b_minus_a"] = {key: out["b"][key] - out["a"][key] for key in HEADLINE[1:]
                        if out["a"][key] is not None and out["b"][key] is not None}
    return out
