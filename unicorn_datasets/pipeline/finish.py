"""Rank 0's last step of a build: the manifest, the card and the printed summary, over the registered stages."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from unicorn_datasets.dataset.atomic import write_text
from unicorn_datasets.dataset.card import write_card
from unicorn_datasets.dataset.layout import MANIFEST, REPORT, artifact
from unicorn_datasets.dataset.repo import BuildRepo
from unicorn_datasets.stages import registered
from unicorn_datasets.stages.captions import NAME as CAPTIONS


def finish(
    repo: BuildRepo,
    recipe: dict[str, Any],
    fp: str,
    seed_stats: dict[str, Any],
    n_seeds: int,
    provenance: dict[str, Any],
    run_stats: dict[str, dict[str, Any]],
    *,
    llm: dict[str, Any],
    code_version: str,
    started: float,
    plan: dict[str, Any] | None = None,
    encoders: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`encoders`: {name: an encoder the build already loaded}, reused by the diversity report. `started`: the
    build's time.monotonic() at its start; the wall time printed counts this step too (the diversity report
    encodes up to 20,000 captions: most of a minute on a CPU)."""
    stages = {s.name: repo.stage_summary(s.name) for s in registered() if s.config and repo.stage_complete(s.name)}
    manifest = {
        "recipe": recipe,
        "fingerprint": fp,
        "code_version": code_version,
        "seeds": {"selected": n_seeds, **seed_stats},
        "llm": llm,
        "provenance": provenance,
        "stages": stages,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "diversity": _diversity(repo, recipe, encoders or {}),
    }
    if plan is not None:  # `unicorn build --plan FILE`: what `unicorn plan` predicted, beside what happened
        from unicorn_datasets.pipeline.plan_report import compare

        manifest["plan"] = compare(plan, stages, run_stats)
    write_text(repo.artifacts() / MANIFEST, json.dumps(manifest, indent=2, default=str))
    write_card(repo.out, manifest)
    summary = {"stages": stages, "run": run_stats, "wall_seconds": time.monotonic() - started,
               "diversity": manifest["diversity"]}
    print_summary(summary)
    return summary


def _diversity(repo: BuildRepo, recipe: dict[str, Any], encoders: dict[str, Any]) -> dict[str, Any]:
    """Synth²-style balance of the caption text (k-means at the recipe's report.k), written to
    artifacts/report.json; the settings come from this build's recipe, not a manifest of an earlier run."""
    from unicorn_datasets.analysis.report import report, settings_from_recipe

    if not (repo.out / CAPTIONS).exists():
        return {}
    r = report(repo.out, settings=settings_from_recipe(recipe), loaded=encoders)
    c = r.get("clustering", {})
    return {"k": r.get("k"), "top5_share": r.get("top5_share"), "entropy": r.get("entropy"),
            "entropy_normalised": r.get("entropy_normalised"), "ttr": r.get("text", {}).get("ttr_mean_per_caption"),
            "n_captions": r.get("n_captions"), "clustered": c.get("clustered"), "encoder": c.get("embeddings"),
            "status": c.get("status"), "why": c.get("why"), "rows_clustered": c.get("rows_clustered"),
            "concepts": r.get("concepts"), "seed_balance": r.get("seed_balance")}


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _reasons(counts: dict[str, int], rows_in: int | None) -> str:
    """`reason=count (rate)` per reason; the rate is of the stage's rows in."""
    return ", ".join(f"{k}={v}" + (f" ({v / rows_in:.1%})" if rows_in else "") for k, v in sorted(counts.items()))


def print_summary(summary: dict[str, Any]) -> None:
    lines = [
        "",
        "build summary",
        f"{'stage':<10}{'rows in':>9}{'rows out':>10}{'rejected':>10}  {'shards run/skipped':<20}"
        f"{'tokens':>9}{'seconds':>9}{'tok/s':>8}  rejections by reason",
    ]
    for stage in (step for spec in registered() for step in spec.summary_steps):
        s = summary["stages"].get(stage, {})
        r = summary["run"].get(stage)
        if not s and not r:
            continue
        r = r or {}
        rejected = s.get("rejected", {})
        secs = r.get("seconds", 0.0)
        tokens = r.get("tokens_run", 0)
        rate = f"{tokens / secs:.1f}" if secs and tokens else "-"
        shards = f"{r.get('shards_run', 0)}/{r.get('shards_skipped', 0)}"
        lines.append(
            f"{stage:<10}{s.get('rows_in', r.get('rows_run', 0)):>9}{s.get('rows_out', '-'):>10}"
            f"{sum(rejected.values()):>10}  {shards:<20}{tokens:>9}{secs:>9.1f}{rate:>8}  "
            + (_reasons(rejected, s.get("rows_in", 0)) or "-")
        )
        if s.get("attempt_reasons"):
            lines.append(f"{'':<10}failed attempts (retries included): {_reasons(s['attempt_reasons'], None)}")
    for stage, r in summary["run"].items():
        if "requests" in r:
            lines.append(f"{stage}: {r['requests']} request(s) sent, {r.get('replayed', 0)} generation(s) replayed "
                         f"from the journal, {r.get('retries', 0)} retries, {r.get('server_errors', 0)} server "
                         f"error(s), at most {r.get('max_in_flight_seen', 0)} in flight")
    for spec in registered():
        s = summary["stages"].get(spec.name)
        if s and spec.summary_lines:
            lines += spec.summary_lines(s)
    div = summary.get("diversity") or {}
    if div.get("status") == "not enough rows":
        lines.append(f"diversity: not enough rows ({div.get('why')}) ({artifact(REPORT)})")
    elif div.get("entropy") is not None:
        lines.append(f"diversity of the caption text ({div.get('encoder')}): k={div['k']} clusters, top-5 share "
                     f"{_num(div.get('top5_share'))} (Synth² 0.577), normalised entropy "
                     f"{_num(div.get('entropy_normalised'))}, mean per-caption TTR {_num(div.get('ttr'))} "
                     f"({artifact(REPORT)})")
    lines.append(f"wall time {summary['wall_seconds']:.1f}s (tokens and tok/s count this run's generation only)")
    print("\n".join(lines), file=sys.stderr, flush=True)
