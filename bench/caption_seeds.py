"""A stand-in for the open-domain caption seeds a real `unicorn-1.2m` build reads with `--seeds` (COCO / CC3M
captions, one per image), for benches that need more rows than the 264 shipped captions give.

Offline, `unicorn-1.2m` holds 264 open-domain captions plus their 8.6 % share of label x template seeds
(528 seeds), so a 3,072-row bench of it needs its own caption file. These captions are composed from short word
lists (who, doing what, where, and a detail), one sentence each, all distinct, in a fixed order for a given
seed. They are for measuring the client and the engine, not for training.

    python bench/caption_seeds.py 3072 /tmp/captions.txt
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

WHO = [
    "A man", "A woman", "Two children", "An old man", "A young girl", "A group of friends", "A cyclist",
    "A street vendor", "A fisherman", "A chef", "A brown dog", "A black cat", "A pair of horses", "A small boy",
    "A teenager", "A couple", "A farmer", "A musician", "A construction worker", "A police officer",
    "A tourist", "A jogger", "A grey heron", "A flock of pigeons", "A mother and her baby", "A skateboarder",
    "A mail carrier", "A painter", "A gardener", "A waiter",
]
DOING = [
    "walking along", "sitting on a bench in", "riding a bicycle through", "reading a book in",
    "taking photos of", "selling fruit at", "waiting for a bus near", "carrying groceries across",
    "playing a guitar in", "eating lunch beside", "pushing a cart through", "resting in the shade of",
    "looking out over", "crossing", "running through", "painting a mural on", "feeding birds at",
    "standing in the rain at", "laughing with friends in", "fixing a fence at",
]
WHERE = [
    "a busy city street", "a quiet park", "a sandy beach", "a crowded market", "a snowy mountain trail",
    "an old stone bridge", "a train station platform", "a small harbour", "a wheat field", "a narrow alley",
    "a lakeside dock", "a village square", "a forest path", "a rooftop garden", "a parking lot",
    "a riverside promenade", "a farmers market", "a school playground", "a desert road", "a botanical garden",
]
DETAIL = [
    "at sunset", "under a cloudy sky", "on a foggy morning", "while a red bus passes by", "next to a yellow kiosk",
    "with tall trees in the background", "as street lamps come on", "beside a row of parked cars",
    "in bright midday light", "near a fountain", "with mountains in the distance", "on a windy afternoon",
    "surrounded by colorful umbrellas", "under falling snow", "beside a wooden fence",
]


def caption_seeds(n: int, seed: int = 0) -> list[str]:
    """n distinct one-sentence captions, shuffled with `seed` (the same list for the same n and seed)."""
    combos = list(itertools.product(WHO, DOING, WHERE, DETAIL))
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} distinct captions, asked for {n}")
    random.Random(seed).shuffle(combos)
    return [f"{who} {doing} {where} {detail}." for who, doing, where, detail in combos[:n]]


def write_caption_seeds(path: Path, n: int, seed: int = 0) -> Path:
    path.write_text("\n".join(caption_seeds(n, seed)) + "\n", encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(write_caption_seeds(a.out, a.n, a.seed))


if __name__ == "__main__":
    main()
