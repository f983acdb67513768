"""Build unicorn_datasets/data/seeds/domains.json: ~10K+ fine-grained labels in 18 domains, with templates.

Run once by a maintainer (offline afterwards; neither input is a runtime dependency of the package):

    apt-get install wordnet-base                  # WordNet 3.0 database (Princeton WordNet licence)
    pip download --no-deps timm && unzip -o timm-*.whl 'timm/data/_info/*' -d /tmp/timm
    python tools/build_seed_vocabulary.py --timm-info /tmp/timm/timm/data/_info \
        --wordnet /usr/share/wordnet --out unicorn_datasets/data/seeds/domains.json

Inputs (both allow redistribution; recorded in the file's "sources" and on the card):
- the ImageNet-21K synset list and synset->lemma file that `timm` ships as package data (Apache-2.0 package;
  the lemmas are WordNet 3.0 words, Princeton WordNet licence);
- the WordNet 3.0 noun database (Debian `wordnet-base`): the hypernym hierarchy, usage-domain markers, and the
  named instances / emotion / art-movement words that ImageNet has no classes for.

Domain rule (transparent, in DOMAIN_ROOTS below): a synset belongs to the FIRST domain, in the listed order,
whose root synset is among its WordNet hypernyms (instance hypernyms included); synsets under no root are
left out. Landmarks are the named instances (proper nouns) under structure / geological formation.
Cleaning: the synset's first lemma, underscores to spaces, parenthesised parts dropped; at most 5 words;
no digits-only labels; a label already taken (case-insensitive) by an earlier domain or the hand-written set
is skipped, so no label is in two domains.
Offensive terms: the whole person.n.01 subtree is left out (the ImageNet "person" categories are where its
offensive labels are: Yang et al., FAT* 2020), and any synset that WordNet marks with a usage domain of
disparagement, ethnic slur, obscenity, vulgarism or slang, or whose gloss says offensive / derogatory /
disparaging / slur / obscene / vulgar, is dropped.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (domain, roots as WordNet sense keys word.n.NN): first match wins, so specific domains come first.
DOMAIN_ROOTS: list[tuple[str, list[str]]] = [
    ("dog_breeds", ["dog.n.01"]),
    ("birds", ["bird.n.01"]),
    ("fish", ["fish.n.01"]),
    ("insects", ["insect.n.01", "arachnid.n.01"]),
    ("animals", ["animal.n.01"]),
    ("flowers", ["flower.n.01"]),
    ("trees", ["tree.n.01"]),
    ("plants", ["vascular_plant.n.01", "plant.n.02", "fungus.n.01"]),
    ("food", ["food.n.01", "food.n.02", "beverage.n.01"]),
    ("vehicles", ["vehicle.n.01", "craft.n.02"]),
    ("musical_instruments", ["musical_instrument.n.01"]),
    ("clothing", ["clothing.n.01", "headdress.n.01", "footwear.n.02", "jewelry.n.01"]),
    ("places", ["geological_formation.n.01", "room.n.01", "body_of_water.n.01", "land.n.04", "area.n.05"]),
    ("architecture", ["structure.n.01"]),
    ("objects", ["artifact.n.01"]),
]
EXCLUDE_ROOTS = ["person.n.01"]
LANDMARK_ROOTS = ["structure.n.01", "geological_formation.n.01"]  # named instances (Eiffel Tower, Everest)
EXTRA_WORDNET = {"emotions": ["emotion.n.01", "facial_expression.n.01"],
                 "art_styles": ["artistic_movement.n.01", "architectural_style.n.01", "school.n.04"]}
BAD_USAGE = ["disparagement.n.01", "ethnic_slur.n.01", "obscenity.n.02", "vulgarism.n.01", "slang.n.02"]
BAD_GLOSS = re.compile(r"\b(offensive|derogatory|disparaging|slur|obscene|vulgar|pejorative)\b", re.I)
MAX_WORDS = 5


class WordNet:
    """The WordNet 3.0 noun database: lemmas, glosses, hypernyms (@, @i) and usage domains (;u)."""

    def __init__(self, folder: Path) -> None:
        self.words: dict[str, list[str]] = {}
        self.gloss: dict[str, str] = {}
        self.parents: dict[str, list[str]] = defaultdict(list)
        self.instance_of: dict[str, list[str]] = defaultdict(list)
        self.children: dict[str, list[str]] = defaultdict(list)
        self.usage: dict[str, list[str]] = defaultdict(list)
        for line in (folder / "data.noun").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue  # licence header
            head, _, gloss = line.partition(" | ")
            f = head.split()
            off, n = f[0], int(f[3], 16)
            self.words[off] = [f[4 + 2 * i] for i in range(n)]
            self.gloss[off] = gloss.strip()
            i = 4 + 2 * n
            for j in range(int(f[i])):
                sym, target = f[i + 1 + 4 * j], f[i + 2 + 4 * j]
                if f[i + 3 + 4 * j] != "n":
                    continue
                if sym in ("@", "@i"):
                    (self.instance_of if sym == "@i" else self.parents)[off].append(target)
                    self.children[target].append(off)
                elif sym == ";u":
                    self.usage[off].append(target)
        self.index: dict[str, list[str]] = {}
        for line in (folder / "index.noun").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue
            f = line.split()
            n_ptr = int(f[3])
            self.index[f[0]] = f[6 + n_ptr:]

    def sense(self, key: str) -> str:
        word, _, num = key.rsplit(".", 2)
        return self.index[word][int(num) - 1]

    def ancestors(self, off: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.parents[off]) + list(self.instance_of[off])
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo += self.parents[p] + self.instance_of[p]
        return seen

    def descendants(self, off: str) -> list[str]:
        out, todo, seen = [], [off], {off}
        while todo:
            for c in self.children[todo.pop()]:
                if c not in seen:
                    seen.add(c)
                    out.append(c)
                    todo.append(c)
        return out


def clean_label(raw: str) -> str | None:
    label = re.sub(r"\(.*?\)", "", raw.replace("_", " ")).strip(" ,;-")
    label = " ".join(label.split())
    if not label or len(label.split()) > MAX_WORDS or not re.search(r"[A-Za-z]", label) or len(label) < 3:
        return None
    return label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timm-info", type=Path, required=True, help="timm/data/_info from the timm wheel")
    ap.add_argument("--timm-version", default="1.0.31")
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    ap.add_argument("--curated", type=Path, default=HERE / "seed_templates.json",
                    help="hand-written templates per domain and the hand-picked labels kept first")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    wn = WordNet(args.wordnet)
    curated = json.loads(args.curated.read_text(encoding="utf-8"))
    bad_usage = {wn.sense(k) for k in BAD_USAGE}
    excluded = {wn.sense(k) for k in EXCLUDE_ROOTS}
    roots = [(d, {wn.sense(k) for k in keys}) for d, keys in DOMAIN_ROOTS]
    dropped = defaultdict(int)

    def offensive(off: str) -> bool:
        return bool(set(wn.usage.get(off, [])) & bad_usage) or bool(BAD_GLOSS.search(wn.gloss.get(off, "")))

    labels: dict[str, list[str]] = {d: list(c.get("labels", [])) for d, c in curated["domains"].items()}
    taken = {lab.casefold() for labs in labels.values() for lab in labs}

    def add(domain: str, raw: str) -> None:
        label = clean_label(raw)
        if label is None:
            dropped["unusable_label"] += 1
        elif label.casefold() in taken:
            dropped["duplicate_label"] += 1
        else:
            taken.add(label.casefold())
            labels[domain].append(label)

    # 1. ImageNet-21K classes, by their WordNet hypernyms
    lemma = dict(line.split("\t", 1) for line in (args.timm_info / "imagenet_synset_to_lemma.txt").read_text()
                 .splitlines() if "\t" in line)
    synsets = (args.timm_info / "imagenet21k_goog_synsets.txt").read_text().split()
    for syn in synsets:
        off = syn[1:]
        if off not in wn.words:
            dropped["not_in_wordnet"] += 1
            continue
        anc = wn.ancestors(off) | {off}
        if anc & excluded:
            dropped["person_subtree"] += 1
            continue
        if offensive(off):
            dropped["offensive"] += 1
            continue
        domain = next((d for d, r in roots if anc & r), None)
        if domain is None:
            dropped["no_domain"] += 1
            continue
        add(domain, lemma.get(syn, wn.words[off][0]).split(",")[0])
    # 2. WordNet words ImageNet has no classes for: named landmarks, emotions, art movements
    for root in LANDMARK_ROOTS:
        for off in wn.descendants(wn.sense(root)):
            if wn.instance_of.get(off) and not offensive(off) and wn.words[off][0][:1].isupper():
                add("landmarks", wn.words[off][0])
    for domain, keys in EXTRA_WORDNET.items():
        for key in keys:
            for off in wn.descendants(wn.sense(key)):
                if not offensive(off) and not wn.instance_of.get(off):
                    add(domain, wn.words[off][0])

    domains = {}
    for d, c in curated["domains"].items():
        if len(c["templates"]) < 10 or not labels[d]:
            raise SystemExit(f"domain {d}: needs >= 10 templates and some labels")
        domains[d] = {"templates": c["templates"], "labels": labels[d]}
    out = {
        "generated_by": "tools/build_seed_vocabulary.py (see its docstring for the domain rule and the filters)",
        "sources": [
            {"name": "ImageNet-21K class list (imagenet21k_goog_synsets.txt, imagenet_synset_to_lemma.txt)",
             "origin": f"timm {args.timm_version} package data (timm/data/_info), PyPI",
             "license": "WordNet-3.0 (lemmas; timm package Apache-2.0)"},
            {"name": "WordNet 3.0 noun database (hierarchy, landmarks, emotions, art movements)",
             "origin": "Princeton WordNet 3.0 (Debian package wordnet-base)", "license": "WordNet-3.0",
             "notice": "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved."},
            {"name": "hand-written templates and hand-picked labels (tools/seed_templates.json)",
             "origin": "unicorn-datasets", "license": "Apache-2.0"},
        ],
        "rule": {"domain_roots": dict(DOMAIN_ROOTS), "excluded_roots": EXCLUDE_ROOTS,
                 "landmarks": f"named instances under {', '.join(LANDMARK_ROOTS)}", "wordnet_extra": EXTRA_WORDNET,
                 "offensive_usage_domains": BAD_USAGE, "offensive_gloss": BAD_GLOSS.pattern, "dropped": dict(dropped)},
        "domains": domains,
    }
    # one value per line: compact, diffable, and within the seed reader's line-length limit
    text = json.dumps(out, ensure_ascii=False, indent=0, separators=(",", ":"))
    args.out.write_text(text + "\n", encoding="utf-8")
    n = sum(len(d["labels"]) for d in domains.values())
    print(f"{args.out}: {n} labels in {len(domains)} domains, {args.out.stat().st_size / 1e6:.2f} MB; "
          + ", ".join(f"{d} {len(v['labels'])}" for d, v in domains.items()) + f"; dropped {dict(dropped)}")


if __name__ == "__main__":
    main()
