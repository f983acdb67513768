"""CPU per caption of the seed-cosine check: inline, one encoder call per caption (as before issue 19), vs one
batch of the check worker (`SeedCosineCheck`, embeddings from encoders/stable.py). MiniLM, 64 captions.

    python bench/seed_check_cost.py
    python bench/seed_check_cost.py --words 1500

`--words N`: the word-bag check (`captions.seed_cosine_embedding: words`) on the demo recipe's first N seeds
and a fake-server caption for each, in batches of 8 as the worker sees them: how many words it had to encode
as the captions went by (its cache fills), and its CPU per caption.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unicorn_datasets.encoders import load_encoder  # noqa: E402
from unicorn_datasets.generation.checks import Candidate  # noqa: E402
from unicorn_datasets.stages.seed_check import SeedCosine, SeedCosineCheck  # noqa: E402
from unicorn_datasets.testing.fake_answers import caption_paragraph  # noqa: E402


def words_growth(n: int) -> None:
    from unicorn_datasets.pipeline.loop import collect_seeds
    from unicorn_datasets.recipe import load_recipe

    recipe = dataclasses.replace(load_recipe("demo"), limit=n)
    seeds = collect_seeds(recipe)[0]
    check = SeedCosineCheck(load_encoder(recipe.transfer.encoder), recipe.captions.min_seed_cosine, "words")
    pairs = [(caption_paragraph(s.seed, random.Random(i)), s.seed) for i, s in enumerate(seeds)]
    t, rejected = time.process_time(), 0
    for i in range(0, len(pairs), 8):
        rejected += sum(v[1] is not None for v in check([Candidate(p) for p in pairs[i : i + 8]]))
        done = min(i + 8, len(pairs))
        if done in (8, 200, 400, 1000) or done == len(pairs):
            print(f"after {done} captions: {check.encoder.encoded_words} words encoded, "
                  f"{1000 * (time.process_time() - t) / done:.2f} ms CPU per caption so far")
    print(f"{len(pairs)} captions, {rejected} rejected as off_seed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--words", type=int, default=0, help="run the word-bag cache growth on N demo seeds instead")
    args = ap.parse_args()
    if args.words:
        words_growth(args.words)
        return
    enc = load_encoder("minilm")
    rng = random.Random(0)
    seeds = [f"a photo of a {w} near the {x}" for w, x in zip(["dog", "cat", "boat", "tree"] * 16,
                                                              ["lake", "road", "house", "field"] * 16, strict=True)]
    caps = [caption_paragraph(s, rng) for s in seeds]
    enc.encode_text(caps[:4])  # warm-up
    t, w = time.process_time(), time.perf_counter()
    cos = SeedCosine(enc, seeds)
    inline = [cos(i, c) for i, c in enumerate(caps)]
    a, aw = time.process_time() - t, time.perf_counter() - w
    t, w = time.process_time(), time.perf_counter()
    batched = SeedCosineCheck(enc, 0.3)([Candidate((c, s)) for c, s in zip(caps, seeds, strict=True)])
    b, bw = time.process_time() - t, time.perf_counter() - w
    same = sum((x >= 0.3) == (v[1] is None) for x, v in zip(inline, batched, strict=True))
    n = len(caps)
    print(f"{n} captions: inline {1000 * a / n:.1f} ms CPU ({1000 * aw / n:.1f} ms wall) per caption; worker batch "
          f"{1000 * b / n:.1f} ms CPU ({1000 * bw / n:.1f} ms wall) per caption; CPU ratio {a / b:.2f}; "
          f"same verdict for {same}/{n}")


if __name__ == "__main__":
    main()
