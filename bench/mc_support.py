"""Precision/recall of the MC answer-support check (stages/instruct/support.py) on hand-made cases.

Each case in mc_support_cases.jsonl is (caption, question, options, marked answer, supported?).
The check flags an item when the marked option's caption support minus the best other option's is
below a margin. Positive = "truly unsupported". Also scores two simpler variants for comparison.

    python bench/mc_support.py [--encoder minilm] [--margin -0.05]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from unicorn_datasets.encoders import load_encoder
from unicorn_datasets.encoders.base import unit_rows
from unicorn_datasets.stages.instruct.config import LETTERS
from unicorn_datasets.stages.instruct.support import answer_margins, caption_sentences

HERE = Path(__file__).parent


def _variant_margins(case: dict, enc, mode: str) -> float:
    sents = caption_sentences(case["caption"]) if mode != "whole" else [case["caption"]]
    opts = [case["options"][k] if mode == "option" else f'{case["question"]} {case["options"][k]}' for k in LETTERS]
    emb = unit_rows(enc.encode_text(sents + opts))
    support = (emb[len(sents):] @ emb[: len(sents)].T).max(axis=1)
    m = LETTERS.index(case["answer"])
    return float(support[m] - np.delete(support, m).max())


def _scores(margins: list[float], truth_unsupported: list[bool], threshold: float) -> tuple[float, float, float]:
    flagged = [m < threshold for m in margins]
    tp = sum(f and t for f, t in zip(flagged, truth_unsupported))
    fp = sum(f and not t for f, t in zip(flagged, truth_unsupported))
    fn = sum(t and not f for f, t in zip(flagged, truth_unsupported))
    prec = tp / (tp + fp) if tp + fp else 1.0
    rec = tp / (tp + fn) if tp + fn else 1.0
    return prec, rec, sum(flagged) / len(flagged)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--margin", type=float, default=-0.05, help="threshold whose misses are listed")
    args = ap.parse_args()
    cases = [json.loads(line) for line in (HERE / "mc_support_cases.jsonl").read_text().splitlines() if line]
    enc = load_encoder(args.encoder)
    truth = [not c["supported"] for c in cases]
    variants = {
        "question+option vs best sentence (shipped)": [
            answer_margins([{"Question": c["question"], "Options": c["options"], "Answer": c["answer"]}],
                           c["caption"], enc)[0]
            for c in cases
        ],
        "option alone vs best sentence": [_variant_margins(c, enc, "option") for c in cases],
        "question+option vs whole caption": [_variant_margins(c, enc, "whole") for c in cases],
    }
    shipped = variants["question+option vs best sentence (shipped)"]
    for c, m in zip(cases, shipped):
        if (m < args.margin) != (not c["supported"]):
            print(f"  miss: margin {m:+.3f} supported={c['supported']} {c['question']} -> {c['options'][c['answer']]}")
    print(f"{len(cases)} cases, {sum(truth)} unsupported; encoder {args.encoder}")
    for name, margins in variants.items():
        print(f"\n{name}")
        print("  margin  precision  recall  flagged")
        for th in (-0.05, -0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05):
            p, r, f = _scores(margins, truth, th)
            print(f"  {th:6.2f}  {p:9.2f}  {r:6.2f}  {f:7.2f}")


if __name__ == "__main__":
    main()
