"""Precision/recall of Stage 2's model-free item checks (stages/instruct/checks.py) on labelled items.

stage2_checks_cases.jsonl holds two kinds of line: ``{"caption_id", "caption"}`` and one labelled item
``{"caption_id", "task", "item", "labels": {check: defective?}, "origin", "source"}``. ``origin`` says
where the item came from: ``real`` (a Gemma-3-270M demo output, unchanged), ``edited-from-real`` (a real
item changed by hand to make the other class) or ``written`` (by hand); ``held_out`` lists the checks whose
rules were frozen before the item was labelled (for the others the item was seen while the rules were
written, so their scores are optimistic). An item is labelled only for the checks it is a fair case of (an
MC item is no case for the QA answer checks); ``earlier_answers`` are the answers before it in its row (the
cases of ``repeated_answer``). The ``ungrounded_answer`` and ``repeated_answer`` labels were given by a
second reader who never saw the rules. Positive = defective.

For comparison it also scores the copy check as it was before issue 19 (questions only) and model-based
variants through the sentence encoder (``--encoder``, default the offline MiniLM; ``--no-encoder`` skips
them): the question-answer cosine for answer relevance, and each option's best caption-sentence
cosine for option support.

    python bench/stage2_checks.py [--encoder minilm | --no-encoder]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unicorn_datasets.encoders.base import unit_rows
from unicorn_datasets.recipe import load_recipe
from unicorn_datasets.stages.instruct.checks import (
    copies_example,
    copies_example_question,
    malformed_question,
    off_question_answer,
    repeated_answer,
    ungrounded_answer,
    unsupported_options,
)
from unicorn_datasets.stages.instruct.config import LETTERS
from unicorn_datasets.stages.instruct.support import caption_sentences

HERE = Path(__file__).parent
CFG = load_recipe("demo").instruct  # the demo's max_chars and overlap

Case = dict[str, Any]

SHIPPED: dict[str, Callable[[Case], bool]] = {
    "copied_example": lambda c: copies_example(c["item"], c["caption"], CFG.max_example_overlap),
    "malformed_question": lambda c: malformed_question(c["item"]["Question"], CFG.chars(c["task"])),
    "off_question_answer": lambda c: off_question_answer(c["item"]["Question"], c["item"]["Answer"]),
    "unsupported_options": lambda c: unsupported_options(c["item"]["Question"], c["item"]["Options"], c["caption"]),
    # shipped for QA answers only (validation.py); the bench scores it on QA items and shows the same rule on
    # reasoning items as a variant
    "ungrounded_answer": lambda c: ungrounded_answer(c["item"]["Question"], c["item"]["Answer"], c["caption"]),
    "repeated_answer": lambda c: repeated_answer(c["item"]["Answer"], c.get("earlier_answers") or []),
}


def load_cases(path: Path) -> list[Case]:
    captions: dict[str, str] = {}
    cases: list[Case] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "caption" in rec:
            captions[rec["caption_id"]] = rec["caption"]
        else:
            cases.append(rec)
    for c in cases:
        c["caption"] = captions[c["caption_id"]]
    return cases


def scores(flagged: list[bool], truth: list[bool]) -> tuple[float, float, int, int, int]:
    tp = sum(f and t for f, t in zip(flagged, truth, strict=True))
    fp = sum(f and not t for f, t in zip(flagged, truth, strict=True))
    fn = sum(t and not f for f, t in zip(flagged, truth, strict=True))
    return (tp / (tp + fp) if tp + fp else 1.0, tp / (tp + fn) if tp + fn else 1.0, tp, fp, fn)


def qa_cosines(cases: list[Case], enc: Any) -> list[float]:
    emb = unit_rows(enc.encode_text([t for c in cases for t in (c["item"]["Question"], c["item"]["Answer"])]))
    return [float(emb[2 * i] @ emb[2 * i + 1]) for i in range(len(cases))]


def best_option_support(cases: list[Case], enc: Any) -> list[float]:
    out = []
    for c in cases:
        sents = caption_sentences(c["caption"]) or [c["caption"]]
        emb = unit_rows(enc.encode_text(sents + [c["item"]["Options"][k] for k in LETTERS]))
        out.append(float((emb[len(sents):] @ emb[: len(sents)].T).max()))
    return out


def answer_support(cases: list[Case], enc: Any) -> list[float]:
    """Each answer's best cosine with a sentence of its caption (a model-based grounding score)."""
    out = []
    for c in cases:
        sents = caption_sentences(c["caption"]) or [c["caption"]]
        emb = unit_rows(enc.encode_text([*sents, c["item"]["Answer"]]))
        out.append(float((emb[-1] @ emb[:-1].T).max()))
    return out


def demo_rows(path: Path) -> None:
    """Re-validate captured raw demo outputs with the item checks off and on (no encoder: the demo's
    answer-support check is left out of both): rows accepted, rejections and item drops by reason."""
    from unicorn_datasets.stages.instruct import validate

    attempts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(f"\n### the demo's raw Stage-2 outputs ({len(attempts)} attempts), re-validated in completion mode")
    print("| `instruct.item_checks` | rows accepted | rejections by reason | items dropped by an item check |")
    print("|---|---:|---|---|")
    for name, checks in (("[] (none)", ()), ("all (default)", CFG.item_checks)):
        cfg = dataclasses.replace(CFG, item_checks=checks)
        reasons: Counter[str] = Counter()
        drops: Counter[str] = Counter()
        for a in attempts:
            v = validate(a["task"], a["raw"], a["caption"], cfg, example_in_prompt=True)
            reasons.update([v.reason] if v.reason else [])
            drops.update(r.removeprefix("dropped_") for r in v.repairs if r.removeprefix("dropped_") in SHIPPED)
        ok = len(attempts) - sum(reasons.values())
        print(f"| {name} | {ok} / {len(attempts)} | {dict(reasons.most_common())} | {dict(drops.most_common())} |")


def row(name: str, flagged: list[bool], truth: list[bool]) -> str:
    p, r, tp, fp, fn = scores(flagged, truth)
    return f"| {name} | {p:.2f} | {r:.2f} | {tp} | {fp} | {fn} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=str(HERE / "stage2_checks_cases.jsonl"))
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--no-encoder", action="store_true")
    ap.add_argument("--misses", action="store_true", help="list the shipped checks' false positives/negatives")
    ap.add_argument("--raw", default=str(HERE / "stage2_demo_raw.jsonl"), help="captured raw demo outputs")
    args = ap.parse_args()
    if Path(args.raw).exists():
        demo_rows(Path(args.raw))
    cases = load_cases(Path(args.cases))
    enc = None
    if not args.no_encoder:
        from unicorn_datasets.encoders import load_encoder

        enc = load_encoder(args.encoder)
    for check, shipped in SHIPPED.items():
        mine = [c for c in cases if check in c["labels"]]
        if check == "ungrounded_answer":
            reasoning = [c for c in mine if c["task"] == "reasoning"]
            mine = [c for c in mine if c["task"] == "qa"]
        truth = [bool(c["labels"][check]) for c in mine]
        origins = Counter(c["origin"] for c in mine)
        print(f"\n### {check}: {len(mine)} cases, {sum(truth)} defective / {len(truth) - sum(truth)} good; "
              + ", ".join(f"{k} {v}" for k, v in sorted(origins.items())))
        print("| variant | precision | recall | TP | FP | FN |\n|---|---:|---:|---:|---:|---:|")
        flagged = [shipped(c) for c in mine]
        print(row("shipped (lexical)", flagged, truth))
        for name, keep in (("shipped, real items only", lambda c: c["origin"] == "real"),
                           ("shipped, held-out real items", lambda c, check=check: check in c.get("held_out", []))):
            sub = [i for i, c in enumerate(mine) if keep(c)]
            if sub:
                print(row(name, [flagged[i] for i in sub], [truth[i] for i in sub]))
        if check == "copied_example":
            print(row("questions only (before issue 19)",
                      [copies_example_question(c["item"]["Question"], c["caption"], CFG.max_example_overlap)
                       for c in mine], truth))
        if enc is not None and check == "off_question_answer":
            cos = qa_cosines(mine, enc)
            for t in (0.1, 0.2, 0.3, 0.4):
                print(row(f"question-answer cosine < {t}", [x < t for x in cos], truth))
        if enc is not None and check == "unsupported_options":
            sup = best_option_support(mine, enc)
            for t in (0.2, 0.3, 0.4, 0.5):
                print(row(f"best option-sentence cosine < {t}", [x < t for x in sup], truth))
                print(row(f"lexical and cosine < {t}", [f and x < t for f, x in zip(flagged, sup, strict=True)],
                          truth))
        if check == "ungrounded_answer":
            print(row("the same rule on reasoning items (not shipped)", [shipped(c) for c in reasoning],
                      [bool(c["labels"][check]) for c in reasoning]))
        if enc is not None and check == "ungrounded_answer":
            sup = answer_support(mine, enc)
            for t in (0.3, 0.4, 0.5, 0.6):
                print(row(f"answer's best caption-sentence cosine < {t}", [x < t for x in sup], truth))
        if args.misses:
            for c, f, t in zip(mine, flagged, truth, strict=True):
                if f != t:
                    kind = "FP" if f else "FN"
                    print(f"  {kind} [{c['origin']}] {json.dumps(c['item'], ensure_ascii=False)[:300]}")
    print(f"\n{len(cases)} labelled items; encoder: {None if enc is None else args.encoder}")


if __name__ == "__main__":
    main()
