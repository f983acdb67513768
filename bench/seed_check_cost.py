"""CPU per caption of the seed-cosine check: inline, one encoder call per caption (as before issue 19), vs one
batch of the check worker (`SeedCosineCheck`, embeddings from encoders/stable.py). MiniLM, 64 captions.

    python bench/seed_check_cost.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unicorn_datasets.encoders import load_encoder  # noqa: E402
from unicorn_datasets.generation.checks import Candidate  # noqa: E402
from unicorn_datasets.stages.seed_check import SeedCosine, SeedCosineCheck  # noqa: E402
from unicorn_datasets.testing.fake_answers import caption_paragraph  # noqa: E402


def main() -> None:
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
