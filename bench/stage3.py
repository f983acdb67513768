"""Stage 3 benchmarks, each a ratio against a baseline measured in the same command.

  python bench/stage3.py throughput [--rows 2000]     # whole Stage 3 (build) vs bare encoder loop
  python bench/stage3.py memory [--dim 1280]           # peak RSS of the mean/shift pass, 120K vs 1.2M rows
  python bench/stage3.py scaling [--rows 2000]         # Stage 3 rows/s under 2 processes vs 1

The pipeline runs for real: a dataset folder whose Stage-1 parts are written here (synthetic
captions assembled from the shipped seeds), then `build.py --stages captions,pretrain`, which
finds Stage 1 complete and runs the encode + transfer passes only.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unicorn_datasets.dataset.repo import BuildRepo  # noqa: E402
from unicorn_datasets.recipe import fingerprint, load_recipe  # noqa: E402
from unicorn_datasets.seeds.sources import load_caption_seeds  # noqa: E402
from unicorn_datasets.transfer.methods import MeanAccumulator, apply_transfer  # noqa: E402


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """Caption-length texts (5-9 seed sentences, about 35-135 words) stitched from the shipped seeds."""
    seeds = [s.seed for s in load_caption_seeds("builtin:open_domain")]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(5, 10))
        out.append(" ".join(seeds[int(i)] for i in rng.integers(0, len(seeds), k)))
    return out


def prepare(out: Path, captions: list[str], shard_size: int, transfer: dict | None = None) -> list[str]:
    """A build folder with Stage 1 finished: parts + COMPLETE marker, as the pipeline leaves them.

    `transfer`: more transfer fields, exactly as the build will see them (they are part of the fingerprint)."""
    recipe = load_recipe("demo", {"stages": ["captions", "pretrain"], "shard_size": shard_size,
                                  "transfer.embedding_dtype": "float32",
                                  **{f"transfer.{k}": v for k, v in (transfer or {}).items()}})
    repo = BuildRepo(out)
    repo.start(recipe.to_dict(), fingerprint(recipe), overwrite=False)
    ids = [f"bench-{i:07d}" for i in range(len(captions))]
    for shard, start in enumerate(range(0, len(captions), shard_size)):
        sl = slice(start, start + shard_size)
        n = len(ids[sl])
        t = pa.table(
            {
                "id": ids[sl],
                "seed": captions[sl],
                "source": ["bench"] * n,
                "caption": captions[sl],
                "reject_reason": pa.array([None] * n, pa.string()),
                "raw_output": captions[sl],
                "attempts": [1] * n,
                "n_tokens": [0] * n,
                "gen_seed": [0] * n,
            }
        )
        repo.write_part("captions", shard, t, {"rows": n})
    repo.mark_stage_complete("captions", {"rows_in": len(ids), "rows_out": len(ids), "rejected": {}})
    return [
        "--recipe",
        "demo",
        "--out",
        str(out),
        "--stages",
        "captions,pretrain",
        "--shard-size",
        str(shard_size),
        "--embedding-dtype",
        "float32",
    ]


def stage3_seconds(stderr: str) -> float:
    """Seconds of the encode + pretrain passes from the build summary (max over ranks)."""
    total = 0.0
    for stage in ("encode", "pretrain"):
        m = re.search(rf"^{stage}\s+\d+\s+\S+\s+\d+\s+\S+\s+\d+\s+([\d.]+)", stderr, re.M)
        assert m, stderr[-2000:]
        total += float(m.group(1))
    return total


def throughput(args: argparse.Namespace) -> None:
    from unicorn_datasets.encoders import load_encoder

    captions = synthetic_captions(args.rows)
    work = Path(tempfile.mkdtemp())
    try:
        enc = load_encoder("minilm")
        enc.encode_text(captions[:64], batch_size=64)  # warm-up
        t0 = time.perf_counter()
        for start in range(0, len(captions), args.shard_size):  # the bare loop: same model, batch size, shards
            enc.encode_text(captions[start : start + args.shard_size], batch_size=64)
        bare = time.perf_counter() - t0
        cmd = prepare(work / "out", captions, args.shard_size)
        r = subprocess.run([sys.executable, str(ROOT / "build.py"), *cmd], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        stage3 = stage3_seconds(r.stderr)
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "bare_rows_per_s": args.rows / bare,
                    "stage3_rows_per_s": args.rows / stage3,
                    "ratio_stage3_over_bare": bare / stage3,
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _shard(i: int, rows: int, dim: int) -> np.ndarray:
    x = np.random.default_rng(i).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _mean_shift_pass(n_rows: int, dim: int, shard_rows: int) -> float:
    """The Stage-3 reduction and shift, shard by shard, as the pipeline does it; returns peak RSS in MiB."""
    acc = MeanAccumulator(dim)
    n_shards = n_rows // shard_rows
    for i in range(n_shards):
        acc.add(_shard(i, shard_rows, dim))
    mean = acc.mean()
    for i in range(n_shards):
        apply_transfer(_shard(i, shard_rows, dim), "mean-shift", mean=mean)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(args: argparse.Namespace) -> None:
    """Each size runs in a fresh process so peak RSS is its own."""
    if args.child:
        print(_mean_shift_pass(args.child, args.dim, args.shard_rows))
        return
    res = {}
    for n in (args.small, args.large):
        r = subprocess.run(
            [
                sys.executable,
                __file__,
                "memory",
                "--child",
                str(n),
                "--dim",
                str(args.dim),
                "--shard-rows",
                str(args.shard_rows),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        res[n] = float(r.stdout.strip().splitlines()[-1])
    data_gib = args.large * args.dim * 4 / 2**30
    print(
        json.dumps(
            {
                "dim": args.dim,
                "shard_rows": args.shard_rows,
                "peak_rss_mib": res,
                "large_over_small": res[args.large] / res[args.small],
                "float32_embeddings_at_large_gib": round(data_gib, 2),
            },
            indent=2,
        )
    )


def scaling(args: argparse.Namespace) -> None:
    captions = synthetic_captions(args.rows)
    work = Path(tempfile.mkdtemp())
    try:
        rates = {}
        for procs in (1, 2):
            cmd = prepare(work / f"out{procs}", captions, args.shard_size)
            launcher = (
                [sys.executable]
                if procs == 1
                else [
                    sys.executable,
                    "-m",
                    "accelerate.commands.launch",
                    "--multi_gpu",
                    "--num_processes",
                    "2",
                    "--num_machines",
                    "1",
                    "--mixed_precision",
                    "no",
                    "--dynamo_backend",
                    "no",
                ]
            )
            r = subprocess.run([*launcher, str(ROOT / "build.py"), *cmd], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-3000:]
            rates[procs] = args.rows / stage3_seconds(r.stderr)
        print(json.dumps({"rows": args.rows, "rows_per_s": rates, "ratio_2_over_1": rates[2] / rates[1]}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["throughput", "memory", "scaling"])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--shard-size", type=int, default=250)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--shard-rows", type=int, default=2000)
    p.add_argument("--small", type=int, default=120_000)
    p.add_argument("--large", type=int, default=1_200_000)
    p.add_argument("--child", type=int, default=0)
    args = p.parse_args()
    {"throughput": throughput, "memory": memory, "scaling": scaling}[args.what](args)


if __name__ == "__main__":
    main()
