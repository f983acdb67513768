"""A plan as people read it: the table `unicorn plan` prints, and predicted-vs-actual for a build's manifest
and card (`unicorn build --plan FILE`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unicorn_datasets.errors import BuildError

COLUMNS = ("rows", "requests", "prompt_tokens", "completion_tokens", "seconds")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _n(x: Any) -> str:
    return "-" if x is None else f"{x:,}"


def format_plan(plan: dict[str, Any]) -> str:
    probe, total = plan["probe"], plan["total"]
    llm = probe.get("llm", {})
    lines = [f"plan for recipe '{probe['recipe']}' (fingerprint {probe['fingerprint']}), LLM "
             f"{llm.get('model', '?')} ({llm.get('backend', 'server')}), {probe['window']} row(s) in flight", "",
             f"{'stage':<10}{'rows':>12}{'requests':>12}{'prompt tok':>15}{'completion tok':>16}{'time':>12}"]
    for name, s in plan["stages"].items():
        lines.append(f"{name:<10}{_n(s['rows']):>12}{_n(s['requests']):>12}{_n(s['prompt_tokens']):>15}"
                     f"{_n(s['completion_tokens']):>16}{duration(s['seconds']):>12}")
    lines.append(f"{'total':<10}{'':>12}{_n(total['requests']):>12}{_n(total['prompt_tokens']):>15}"
                 f"{_n(total['completion_tokens']):>16}{duration(total['seconds']):>12}")
    if total.get("cost_usd") is not None:
        lines.append(f"cost: ${total['cost_usd']:,.2f} ({total['pricing']})")
    paper = total.get("paper")
    if paper:
        mine = f", this plan ${total['cost_usd'] / paper['samples']:.6f}" if total.get("cost_usd") and \
            paper["samples"] else ""
        lines.append(f"paper: ${paper['usd_per_sample']} per sample -> ${paper['usd']:,.2f} for {paper['samples']:,} "
                     f"samples{mine}; {paper['synthesis_days']} days of synthesis reported (this plan: "
                     f"{duration(total['seconds'])})")
    lines += ["", "probe (what the prediction rests on):"]
    for name, p in probe["stages"].items():
        lat = p["latency_s"]
        lines.append(f"  {name}: {p['rows']} row(s), {p['accept_share']:.0%} accepted, {p['requests_per_row']:.2f} "
                     f"request(s)/row, {p['prompt_tokens_per_request']:.0f} prompt + "
                     f"{p['completion_tokens_per_request']:.0f} completion tokens/request, latency p50 {lat['p50']} s "
                     f"p99 {lat['p99']} s, {p['tokens_per_s']} tok/s")
        if len(p["ramp"]) > 1:
            lines.append("    window ramp: " + ", ".join(f"{r['window']} -> {r['rows_per_s']} rows/s (row median "
                                                         f"{r['row_seconds_median']} s)" for r in p["ramp"]))
    lines += [f"  note: {n}" for n in probe.get("notes", [])]
    return "\n".join(lines)


def load_plan(path: str, fingerprint: str) -> dict[str, Any]:
    """A saved plan, refused (one line) when it was made for other settings than this build's."""
    try:
        plan = json.loads(Path(path).read_text())
        made_for = plan["probe"]["fingerprint"]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BuildError(f"--plan {path}: not a plan saved by `unicorn plan --save` ({e})") from None
    if made_for != fingerprint:
        raise BuildError(f"--plan {path} was made for other settings (fingerprint {made_for}, this build: "
                         f"{fingerprint}); rerun `unicorn plan` with this build's arguments")
    return plan


def actual_stages(stages: dict[str, Any], run: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the build did, in the plan's terms (this run's requests, tokens and seconds; rows from the summary)."""
    out: dict[str, dict[str, Any]] = {}
    for name, summary in stages.items():
        r = run.get(name, {})
        seconds = r.get("seconds", 0.0)
        if "dim" in summary:  # Stage 3 (embeddings): its encode pass counts too
            seconds += run.get("encode", {}).get("seconds", 0.0)
        out[name] = {"rows": summary.get("rows_in"), "requests": r.get("requests", 0),
                     "completion_tokens": r.get("tokens_run", 0), "seconds": round(seconds, 1),
                     "resumed": bool(r.get("shards_skipped"))}
    return out


def compare(plan: dict[str, Any], stages: dict[str, Any], run: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest's `plan`: per stage the predicted and the actual numbers side by side."""
    actual = actual_stages(stages, run)
    per_stage = {name: {"predicted": {k: p.get(k) for k in COLUMNS}, "actual": actual.get(name)}
                 for name, p in plan["stages"].items()}
    return {"made": plan["probe"].get("made"), "probe": plan["probe"].get("stages"), "stages": per_stage,
            "total_predicted": plan["total"]}


def card_text(recorded: dict[str, Any] | None) -> str:
    """Predicted vs actual, for the card (empty without a plan)."""
    if not recorded:
        return ""
    lines = ["", "", "### Plan vs build", "",
             "`unicorn plan` predicted this build from a probe; what happened beside it "
             "(actual = this run's work: a resumed build did part of it earlier).", "",
             "| stage (plan / build) | rows | requests | completion tokens | time |", "|---|---|---|---|---|"]
    for name, s in recorded["stages"].items():
        p, a = s["predicted"], s.get("actual") or {}
        lines.append(f"| {name} | {_n(p.get('rows'))} / {_n(a.get('rows'))} | {_n(p.get('requests'))} / "
                     f"{_n(a.get('requests'))} | {_n(p.get('completion_tokens'))} / {_n(a.get('completion_tokens'))}"
                     f" | {duration(p.get('seconds'))} / {duration(a.get('seconds'))} |")
    return "\n".join(lines)
