"""The server client alone vs a bare asyncio client: does `ServerBackend.agenerate_one` keep the window full?

Both send the same caption requests (the demo recipe's seeds, built by `captions.build_request`, validated
and retried with a new seed on rejection) to the fake OpenAI server with a window of K requests: a
semaphore of K around each attempt, as the generation engine keeps K open. Only the HTTP call differs:
bare httpx vs the backend (huggingface_hub chat client, scheduler, adaptive limit, retries). Reported:
rows/s and the in-flight counts the server saw, and the ratios client/bare.

    python bench/server_client.py --rows 2000 --k 64 256 --latency-scale 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_throughput import caption_work, run_bare, window  # noqa: E402

from unicorn_datasets.generation.server import ServerBackend  # noqa: E402
from unicorn_datasets.recipe import CaptionsSection  # noqa: E402
from unicorn_datasets.stages import captions  # noqa: E402
from unicorn_datasets.testing.fake_openai_server import FakeServer, serve  # noqa: E402


def run_client(server: FakeServer, k: int, seeds: list[Any], cfg: CaptionsSection, build_seed: int) -> dict:
    server.reset()
    backend = ServerBackend([server.url], max_in_flight=k, timeout=600)
    backend.check_available()  # the probe, outside the measured window as the engine does it
    t0 = time.monotonic()
    outcome = asyncio.run(_client(backend, k, seeds, cfg, build_seed))
    wall = time.monotonic() - t0
    stats = backend.stats()["endpoints"][0]
    backend.close()
    return {**window(server.stats(series=True), len(seeds), k, wall), "outcomes": dict(outcome),
            "final_limit": stats["limit"], "limit_decreases": stats["limit_decreases"]}


async def _client(backend: ServerBackend, k: int, seeds: list[Any], cfg: CaptionsSection,
                  build_seed: int) -> Counter:
    sem = asyncio.Semaphore(k)

    async def one(seed: Any) -> str:
        reason = "no_attempt"
        for attempt in range(cfg.max_attempts):
            req = captions.build_request(seed.id, seed.seed, cfg, build_seed, attempt)
            async with sem:
                res = await backend.agenerate_one(req, cfg.sampling)
            reason = captions.validate(res.text, res.finish_reason, cfg, seed.seed)[1] or "accepted"
            if reason == "accepted":
                break
        return reason

    try:
        return Counter(await asyncio.gather(*(one(s) for s in seeds)))
    finally:
        await backend.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--k", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--median", type=float, default=2.0)
    ap.add_argument("--p99", type=float, default=20.0)
    ap.add_argument("--latency-scale", type=float, default=0.1)
    args = ap.parse_args()
    seeds, cfg, build_seed = caption_work(args.rows)
    results: dict[str, Any] = {}
    with serve(median=args.median, p99=args.p99, latency_scale=args.latency_scale) as server:
        for k in args.k:
            bare = run_bare(server, k, seeds, cfg, build_seed)
            client = run_client(server, k, seeds, cfg, build_seed)
            results[f"k{k}"] = {"bare": bare, "client": client,
                                "rows_per_s_ratio": client["rows_per_s"] / bare["rows_per_s"],
                                "steady_mean_in_flight_ratio":
                                    client["steady_mean_in_flight"] / bare["steady_mean_in_flight"]}
            print(f"K={k}: bare {bare['rows_per_s']:.1f} rows/s (steady in-flight {bare['steady_mean_in_flight']:.1f}, "
                  f"p5 {bare['steady_p5_in_flight']:.0f}); client {client['rows_per_s']:.1f} rows/s (steady in-flight "
                  f"{client['steady_mean_in_flight']:.1f}, p5 {client['steady_p5_in_flight']:.0f}, "
                  f"limit {client['final_limit']}, decreases {client['limit_decreases']}); "
                  f"ratio {results[f'k{k}']['rows_per_s_ratio']:.3f}", flush=True)
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
