"""Learned-prior benchmarks, each a ratio or a curve measured within one command.

  python bench/prior.py stage3 [--rows 2000]                  # Stage-3 rows/s: --transfer prior vs mean-shift
  python bench/prior.py curve --data synthetic|realish [--sizes 250,1000,4000,16000]
                                                              # held-out eval (and fit seconds, linear vs
                                                              # flow) against training-set size
  python bench/prior.py gap [--sizes 200,883,2000] [--noise 0.02,0.05] [--seeds 0,1] [--identity 0.6]
                                                              # issue 20: never worse than the mean shift

Data (no real images offline):
- synthetic: 64-d text on the sphere; the image side is a piecewise rotation (4 regions cut by 2 hyperplanes,
  one rotation each) plus a modality offset and noise: a known nonlinear relation.
- gap (issue 20): the text side is the offline MiniLM on every shipped seed (open-domain captions and
  label x template domain seeds, 3,124 texts); the image side is the text embedding mapped by 0.6 I + 0.4 Q
  (Q a random orthogonal matrix; --identity 0: Q alone, a pure rotation), shifted by a gap vector (norm 0.5)
  and noised per dimension, L2-normalised.
- realish:   the text side is the offline MiniLM (384-d) on captions stitched from the shipped seed sentences
  (real text geometry); the image side is a fixed random one-hidden-layer "image tower" of the text embedding
  (tanh), plus a modality offset and noise. Real language, synthetic image side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage3 import prepare, stage3_seconds, synthetic_captions  # noqa: E402

from unicorn_datasets.prior import load_prior, make_prior  # noqa: E402
from unicorn_datasets.prior.evaluate import centred_cosine, compare_methods  # noqa: E402
from unicorn_datasets.prior.train import fit_and_evaluate, fit_families  # noqa: E402
from unicorn_datasets.transfer.methods import l2_normalize  # noqa: E402

CURVE_FLOW = {"hidden": 256, "layers": 3, "max_epochs": 80, "patience": 8}


def _rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((d, d)))[0]


def synthetic_pairs(n: int, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The relation is fixed by `seed`; the rows by `seed` and n (draw test rows with another `rows_seed`)."""
    rel = np.random.default_rng(seed)
    rots = [_rotation(rel, d) for _ in range(4)]
    planes = rel.standard_normal((2, d))
    offset = 0.3 * rel.standard_normal(d) / np.sqrt(d) * 4
    rng = np.random.default_rng(seed + 1000 + n)
    text = l2_normalize(rng.standard_normal((n, d)) + 0.3)
    region = (text @ planes[0] > 0).astype(int) * 2 + (text @ planes[1] > 0).astype(int)
    image = np.stack([text[i] @ rots[r] for i, r in enumerate(region)]) + offset
    return text, l2_normalize(image + 0.05 * rng.standard_normal((n, d)))


def realish_pairs(n: int, seed: int = 0, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    from unicorn_datasets.encoders import load_encoder
    from unicorn_datasets.seeds.sources import load_caption_seeds

    path = cache / f"realish-{n}-{seed}.npy" if cache else None
    if path is not None and path.exists():
        text = np.load(path)
    else:
        sentences = [s.seed for s in load_caption_seeds("builtin:open_domain")]
        rng = np.random.default_rng(seed + 7)
        caps = [" ".join(sentences[int(i)] for i in rng.integers(0, len(sentences), int(rng.integers(2, 4))))
                for _ in range(n)]
        text = load_encoder("minilm").encode_text(caps, batch_size=64)
        if path is not None:
            np.save(path, text)
    rel = np.random.default_rng(12345)  # the "image tower": fixed across sizes
    d, h = text.shape[1], 512
    a, b = rel.standard_normal((d, h)) * 3 / np.sqrt(d), rel.standard_normal((h, d)) / np.sqrt(h)
    offset = rel.standard_normal(d) / np.sqrt(d)
    noise = np.random.default_rng(seed + 99).standard_normal(text.shape) * 0.02
    # pre-activations of std ~1.8: tanh saturates, the relation is clearly nonlinear
    return text, l2_normalize(np.tanh(l2_normalize(text - text.mean(0)) * 12 @ a) @ b + offset + noise)


def stage3(args: argparse.Namespace) -> None:
    """The real build on a folder whose Stage 1 is complete; the prior's weights are fitted on random pairs (the
    throughput depends on its size, not on what it learned): the default flow (512 x 3, 32 Euler steps)."""
    from unicorn_datasets.encoders import load_encoder

    captions = synthetic_captions(args.rows)
    work = Path(tempfile.mkdtemp())
    try:
        enc = load_encoder("minilm")
        rng = np.random.default_rng(0)
        priors = {}
        for family in ("linear", "flow"):
            p = make_prior(family, **({"max_epochs": 1} if family == "flow" else {}))
            p.fit(rng.standard_normal((2000, enc.dim)), rng.standard_normal((2000, enc.dim)), seed=0)
            p.meta["encoder"] = enc.describe()
            priors[family] = p.save(work / f"prior-{family}")
        runs: dict[str, dict] = {"mean-shift": {}}
        for family, folder in priors.items():
            runs[f"prior-{family}"] = {"method": "prior", "prior": str(folder),
                                       "prior_sha256": load_prior(folder).weights_sha256()}
        rates = {}
        for name, transfer in runs.items():
            cmd = prepare(work / name, captions, args.shard_size, transfer)
            extra = ["--transfer", "prior", "--prior", transfer["prior"]] if transfer else []
            r = subprocess.run([sys.executable, str(ROOT / "build.py"), *cmd, *extra], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-3000:]
            rates[name] = args.rows / stage3_seconds(r.stderr)
        print(json.dumps({"rows": args.rows, "stage3_rows_per_s": {k: round(v, 1) for k, v in rates.items()},
                          "ratio_prior_linear_over_mean_shift": round(rates["prior-linear"] / rates["mean-shift"], 3),
                          "ratio_prior_flow_over_mean_shift": round(rates["prior-flow"] / rates["mean-shift"], 3)},
                         indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def curve(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    if args.data == "synthetic":
        text, image = synthetic_pairs(max(sizes) + args.test)
    else:
        text, image = realish_pairs(max(sizes) + args.test, cache=cache)
    test_t, test_v = text[-args.test:], image[-args.test:]
    rows = []
    for n in sizes:
        for family in ("linear", "flow"):
            t0 = time.perf_counter()
            prior = fit_and_evaluate(text[:n], image[:n], family, seed=0, **(CURVE_FLOW if family == "flow" else {}))
            secs = time.perf_counter() - t0
            res = compare_methods(prior, test_t, test_v, seed=0)["methods"]
            rows.append({"pairs": n, "family": family, "fit_seconds": round(secs, 1),
                         **{k: round(v, 4) for k, v in res["prior"]["centred"].items()}})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = {m: {k: round(v, 4) for k, v in r["centred"].items()} for m, r in res.items() if m != "prior"}
    print(json.dumps({"data": args.data, "test_pairs": args.test, "dim": int(text.shape[1]), "flow_hyper": CURVE_FLOW,
                      "baselines_on_test": base, "curve": rows}, indent=2))


def seed_texts_minilm(cache: Path | None) -> np.ndarray:
    from unicorn_datasets.encoders import load_encoder
    from unicorn_datasets.seeds.sources import load_caption_seeds, load_domain_seeds

    path = cache / "gap-minilm.npy" if cache else None
    if path is not None and path.exists():
        return np.load(path)
    texts = [s.seed for s in load_caption_seeds("builtin:open_domain")] + [s.seed for s in load_domain_seeds()]
    emb = load_encoder("minilm").encode_text(texts, batch_size=64)
    if path is not None:
        np.save(path, emb)
    return emb


def gap_pairs(text: np.ndarray, noise: float, seed: int, identity: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Rows shuffled by `seed`; image = Norm((a I + (1 - a) Q) t + gap + noise * N(0, I)), a = `identity`."""
    rng = np.random.default_rng(seed)
    d = text.shape[1]
    q = _rotation(rng, d)
    gap = rng.standard_normal(d)
    t = text[rng.permutation(len(text))]
    image = t @ (identity * np.eye(d) + (1 - identity) * q).T + 0.5 * gap / np.linalg.norm(gap)
    return t, l2_normalize(image + noise * rng.standard_normal(t.shape))


def _uncentred(result: dict, method: str) -> float:
    return round(result["methods"][method]["uncentred"]["paired_cosine"], 4)


def gap(args: argparse.Namespace) -> None:
    """Each size trains on the first N shuffled pairs (10% of them validation), scores on the last `test`."""
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    text = seed_texts_minilm(cache)
    rows = []
    for noise in (float(x) for x in args.noise.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            t, v = gap_pairs(text, noise, seed, args.identity)
            test_t, test_v = t[-args.test:], v[-args.test:]
            for n in (int(x) for x in args.sizes.split(",")):
                fits = {"ridge toward 0 (before)": fit_families(t[:n], v[:n], ["linear"], shrink_to="zero"),
                        "linear": fit_families(t[:n], v[:n], ["linear"]),
                        "orthogonal": fit_families(t[:n], v[:n], ["orthogonal"]),
                        "train --family linear,orthogonal": fit_families(t[:n], v[:n], ["linear", "orthogonal"])}
                res = {name: compare_methods(p, test_t, test_v) for name, p in fits.items()}
                any_res = next(iter(res.values()))
                row = {"noise": noise, "seed": seed, "pairs": n, "train": n - round(n * 0.1),
                       "mean-shift": round(centred_cosine(any_res, "mean-shift"), 4),
                       **{name: round(centred_cosine(r, "prior"), 4) for name, r in res.items()},
                       "uncentred": {"mean-shift": _uncentred(any_res, "mean-shift"),
                                     "linear": _uncentred(res["linear"], "prior")},
                       "linear_alpha": fits["linear"].meta["training"]["alpha"],
                       "train_says": fits["train --family linear,orthogonal"].meta["comparison"]["summary"]}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"test_pairs": args.test, "identity": args.identity, "metric": "held-out centred paired cosine",
                      "rows": rows}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage3")
    s.add_argument("--rows", type=int, default=2000)
    s.add_argument("--shard-size", type=int, default=250)
    c = sub.add_parser("curve")
    c.add_argument("--data", choices=["synthetic", "realish"], default="synthetic")
    c.add_argument("--sizes", default="250,1000,4000,16000")
    c.add_argument("--test", type=int, default=2000, help="held-out test pairs (the same for every size)")
    c.add_argument("--cache", help="folder to cache the realish text embeddings in")
    g = sub.add_parser("gap")
    g.add_argument("--sizes", default="200,883,2000", help="pairs given to the prior (10%% become validation)")
    g.add_argument("--noise", default="0.02,0.05")
    g.add_argument("--seeds", default="0,1", help="relation seeds (Q, gap, noise, row order)")
    g.add_argument("--test", type=int, default=1000)
    g.add_argument("--identity", type=float, default=0.6, help="a in a I + (1 - a) Q (0: a pure rotation)")
    g.add_argument("--cache", help="folder to cache the MiniLM embeddings in")
    args = p.parse_args()
    {"stage3": stage3, "curve": curve, "gap": gap}[args.cmd](args)


if __name__ == "__main__":
    main()
