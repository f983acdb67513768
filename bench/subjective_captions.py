"""Precision/recall of the Stage-1 `subjective` check (text/objectivity.py) on labelled real captions.

subjective_cases.jsonl: one caption per line, ``{"id", "seed", "caption", "origin", "labels": {reader:
subjective?}, "label", "split"}``. ``origin``: ``real`` is a Gemma-3-270M demo output, unchanged (`python
build.py --recipe demo --stages captions` with the other caption checks off, so every output is kept);
``edited-from-real`` is a real caption from which an editor who never saw the rules cut every part that is
not observable (the 270M model writes so few objective captions that they alone would not make 60).
Two readers labelled every caption without seeing the rules (the edited ones shuffled among real ones, under
opaque ids), by the paper's words: a caption is subjective when any of it is not an observable description:
judgement or emotion, mood, literary rhetoric (simile, metaphor, personification), a narrator or a viewer
("you", "we"), sound, smell or taste, backstory (durations, dates, thoughts, speech), or commentary on the
picture instead of what it shows. ``label`` is the readers' answer where they agree, else adjudicated.
``split``: ``dev`` captions were read while the rules were written; ``held_out`` ones only after the rules
were frozen (git history: the commits "rules v2" and before).

    python bench/subjective_captions.py
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from unicorn_datasets.text.objectivity import subjective_markers

HERE = Path(__file__).parent


def scores(cases: list[dict], max_subjective: int) -> dict[str, float | int]:
    tp = fp = fn = tn = 0
    for c in cases:
        flagged = len(subjective_markers(c["caption"], c["seed"])) > max_subjective
        tp, fp = tp + (flagged and c["label"]), fp + (flagged and not c["label"])
        fn, tn = fn + (not flagged and c["label"]), tn + (not flagged and not c["label"])
    return {"cases": len(cases), "positives": tp + fn, "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1), "flagged": tp + fp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=HERE / "subjective_cases.jsonl")
    args = ap.parse_args()
    cases = [json.loads(line) for line in args.cases.read_text().splitlines() if line.strip()]
    readers = sorted({r for c in cases for r in c["labels"]})
    agree = sum(len(set(c["labels"].values())) == 1 for c in cases)
    print(f"{len(cases)} captions, {sum(c['label'] for c in cases)} subjective; readers {readers} agree on "
          f"{agree} ({agree / len(cases):.0%})")
    print("| split | max_subjective | cases | subjective | flagged | precision | recall |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    parts = {"dev": lambda c: c["split"] == "dev", "held_out": lambda c: c["split"] == "held_out",
             "held_out, real only": lambda c: c["split"] == "held_out" and c["origin"] == "real",
             "all": lambda c: True}
    for split, keep in parts.items():
        part = [c for c in cases if keep(c)]
        for k in (0, 1, 2):
            s = scores(part, k)
            print(f"| {split} | {k} | {s['cases']} | {s['positives']} | {s['flagged']} | {s['precision']:.2f} | "
                  f"{s['recall']:.2f} |")
    kinds = Counter(m.kind for c in cases for m in subjective_markers(c["caption"], c["seed"]))
    print("markers by kind:", dict(kinds.most_common()))
    t = time.perf_counter()
    for _ in range(20):
        for c in cases:
            subjective_markers(c["caption"], c["seed"])
    print(f"cost: {(time.perf_counter() - t) / (20 * len(cases)) * 1e6:.0f} us a caption")


if __name__ == "__main__":
    main()
