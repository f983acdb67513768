"""Concept-balanced vs uniform seed selection on a deliberately skewed caption seed file.

The seed file is written from the shipped seeds: `--main-share` (80%) of the lines are label x template
texts of one domain (dog breeds), the rest are the open-domain captions and the other domains' texts. All are
loaded as plain caption seeds, so only the semantic clusters (not the domain bookkeeping) can balance them.
The selection is embedded with `--encoder` (the demo's MiniLM) and clustered by balance.select; the table is
the histogram statistics the card shows, for the balanced and the uniform draw of the same size.

    python bench/balance.py --limit 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from unicorn_datasets.analysis.clustering import balance_report
from unicorn_datasets.recipe import BalanceSection
from unicorn_datasets.seeds.balance import select
from unicorn_datasets.seeds.sources import SHIPPED, load_caption_seeds


def skewed_file(path: Path, main: str, main_share: float, seed: int = 0) -> set[str]:
    """Write the file; returns the texts about the main concept."""
    spec = json.loads((SHIPPED / "domains.json").read_text())["domains"]
    by_domain = {name: [t.replace("{label}", lab) for lab in d["labels"] for t in d["templates"]]
                 for name, d in spec.items()}
    others = [t for name, texts in by_domain.items() if name != main for t in texts]
    others += (SHIPPED / "open_domain.txt").read_text().splitlines()
    rng = np.random.default_rng(seed)
    main_texts = [str(t) for t in by_domain[main]]
    n_other = min(len(others), round(len(main_texts) * (1 - main_share) / main_share))
    lines = main_texts + [str(t) for t in rng.choice(others, size=n_other, replace=False)]
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n")
    return set(main_texts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--k", type=int)
    ap.add_argument("--main-share", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "skewed.txt"
        main_texts = skewed_file(path, "dog_breeds", args.main_share)
        seeds = load_caption_seeds(str(path), source="skewed")
        t0 = time.perf_counter()
        sel = select([seeds], limit=args.limit, seed=args.seed,
                     cfg=BalanceSection(enabled=True, encoder=args.encoder, k=args.k))
        secs = time.perf_counter() - t0
    rep = balance_report(sel.clusters, None)
    dogs = {s.id for s in seeds if s.seed in main_texts}
    uniform = set(np.asarray(sel.clusters.column("id"))[sel.clusters.column("uniform").to_numpy(False)])
    print(f"{len(seeds)} seeds, {len(dogs)} ({len(dogs) / len(seeds):.0%}) about dog breeds; "
          f"limit {args.limit}; encoder {args.encoder}; "
          f"k={rep['k']}; select took {secs:.1f}s\n")
    print("| draw | top-5 share | normalised entropy | largest cluster | dog-domain seeds | cluster sizes |\n"
          "|---|---:|---:|---:|---:|---|")
    for name, ids in (("uniform", uniform), ("balanced", {s.id for s in sel.seeds})):
        st = rep[f"seeds_{name}"]
        print(f"| {name} | {st['top5_share']:.3f} | {st['entropy_normalised']:.3f} | {st['cluster_sizes'][0]} | "
              f"{len(ids & dogs)} | {' '.join(map(str, st['cluster_sizes']))} |")


if __name__ == "__main__":
    main()
