"""Stage-1 throughput against one fake OpenAI-compatible server: the build vs a bare client vs distilabel.

    python bench/engine_throughput.py --rows 2000 --k 64 256 --latency-scale 0.05

All three send the same caption requests (the demo recipe's shipped seeds, chat prompts built by
`stages/captions.build_request`) to one fake server (lognormal latency, median 2 s, p99 20 s, times
`--latency-scale`) and are measured by the server's own counters:

- build:      `python build.py --recipe demo --stages captions --llm-endpoint URL --set llm.max_in_flight=K ...`
- bare:       asyncio + httpx with a semaphore of K, the same requests, the same validation and per-attempt
              seeds as the build (`captions.validate`, `captions.max_attempts`). The K connections are spread over
              K/32 httpx clients: one httpx pool costs O(pool size) CPU per request (httpcore's
              `_assign_requests_to_connections` checks every connection), so a single 256-connection client is
              client-bound on this box (1000 requests: 20.9 s with one client vs 6.2 s with 8 x 32)
- distilabel: TextGeneration + OpenAILLM (own venv, `bench/.venv-distilabel`, created on first use), window
              K = input_batch_size x replicas, for each replica count of `--distilabel-replicas` (no validation
              or retries: it has none)

rows/s counts rows over the server-side window (first request received -> last response sent), so
process start-up and dataset assembly are left out; `wall` is the whole command. In-flight mean and p5 come
from the server's 50 ms samples over the same window. The kill measurement starts the build, SIGKILLs its
process group once a random share of the rows has been answered, reruns it, and counts the requests the
server received twice (`duplicates`: same prompt, seed and max_tokens).

"steady" columns: the same in-flight statistics up to the moment the client had sent all but its last K
requests. After that no client can hold K requests, and with a heavy tail (p99 = 10x median) the last
stragglers set the end of the window for every client alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unicorn_datasets import cli  # noqa: E402
from unicorn_datasets.generation.server.dialects import wire_seed  # noqa: E402  (seed as sent on the wire)
from unicorn_datasets.pipeline.loop import collect_seeds  # noqa: E402
from unicorn_datasets.recipe import CaptionsSection  # noqa: E402
from unicorn_datasets.stages import captions  # noqa: E402
from unicorn_datasets.testing.fake_openai_server import FakeServer, drain_time, inflight_summary, serve  # noqa: E402

DISTILABEL_VENV = ROOT / "bench" / ".venv-distilabel"
RESULTS = ROOT / "bench" / "engine_throughput.json"


def build_args(url: str, out: str, k: int, rows: int) -> list[str]:
    return ["--recipe", "demo", "--out", out, "--llm-endpoint", url, "--stages", "captions",
            "--set", f"llm.max_in_flight={k}", "--prompt-mode", "chat", "--limit", str(rows),
            # the embedding check costs CPU per caption on this 2-core box, and the peers have none
            "--set", "captions.min_seed_cosine=0"]


def caption_work(rows: int) -> tuple[list[Any], CaptionsSection, int]:
    """The seeds, caption config and build seed the build itself uses (parsed by the build's own CLI)."""
    args = cli.parser().parse_args(["build", *build_args("http://unused", "unused", 64, rows)])
    recipe = cli._recipe_from_args(args)
    seeds = collect_seeds(recipe)[0]
    cfg = recipe.captions
    return seeds, cfg, recipe.seed


def window(stats: dict[str, Any], rows: int, k: int, wall: float) -> dict[str, Any]:
    start, end = stats["first_request"] or 0.0, stats["last_response"] or 0.0
    span = max(end - start, 1e-9)
    inflight = inflight_summary(stats["series"], start, end)
    requests = sum(stats["received"].get(x, 0) for x in ("chat", "completion"))
    drained = drain_time(stats["series"], requests, k) or end
    steady = inflight_summary(stats["series"], start, drained)
    return {"rows": rows, "rows_per_s": rows / span, "window_s": span, "wall_s": wall, "requests": requests,
            "mean_in_flight": inflight["mean"], "p5_in_flight": inflight["p5"],
            "steady_s": drained - start, "steady_mean_in_flight": steady["mean"], "steady_p5_in_flight": steady["p5"],
            "max_in_flight": stats["max_in_flight"], "mean_over_k": inflight["mean"] / k,
            "duplicates": stats["duplicates"]}


# --------------------------------------------------------------------------- (a) the build


def run_build(server: FakeServer, k: int, rows: int, work: Path) -> dict[str, Any]:
    server.reset()
    out = work / f"build-k{k}"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), *build_args(server.url, str(out), k, rows),
                           "--overwrite"], capture_output=True, text=True, env=_env(work))
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"build failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return window(server.stats(series=True), rows, k, wall)


def _env(work: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(work / "hf_cache"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run_kill(server: FakeServer, k: int, rows: int, work: Path, rng: random.Random) -> dict[str, Any]:
    """SIGKILL the build once a random share of the rows is answered, rerun it, count re-sent requests."""
    server.reset()
    out = work / f"kill-k{k}"
    cmd = [sys.executable, str(ROOT / "build.py"), *build_args(server.url, str(out), k, rows), "--overwrite"]
    target = int(rows * rng.uniform(0.2, 0.8))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(work),
                            start_new_session=True)
    while proc.poll() is None:
        if sum(server.stats()["served"].values()) >= target:
            break
        time.sleep(0.05)
    at_kill = server.stats()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(cmd[:-1], capture_output=True, text=True, env=_env(work))  # resume: no --overwrite
    if rerun.returncode != 0:
        raise SystemExit(f"rerun after kill failed (exit {rerun.returncode}):\n{rerun.stderr[-3000:]}")
    final = server.stats()
    return {"k": k, "killed_after_served": sum(at_kill["served"].values()), "in_flight_at_kill": at_kill["in_flight"],
            "requests_total": sum(final["received"].get(x, 0) for x in ("chat", "completion")),
            "unique_requests": final["unique_requests"], "sent_twice": final["duplicates"]}


# --------------------------------------------------------------------------- (b) the bare client


def run_bare(server: FakeServer, k: int, seeds: list[Any], cfg: CaptionsSection, build_seed: int) -> dict:
    server.reset()
    t0 = time.monotonic()
    outcome = asyncio.run(_bare(server.url, k, seeds, cfg, build_seed))
    wall = time.monotonic() - t0
    return {**window(server.stats(series=True), len(seeds), k, wall), "outcomes": dict(outcome)}


POOL = 32  # connections per httpx client: its pool scans every connection per request (O(pool) CPU each)


async def _bare(url: str, k: int, seeds: list[Any], cfg: CaptionsSection, build_seed: int) -> Counter:
    """A semaphore of K as a queue of K slots, each slot bound to one of ceil(K / POOL) httpx clients."""
    p = cfg.sampling
    limits = httpx2.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    clients = [httpx2.AsyncClient(timeout=600, limits=limits) for _ in range(-(-k // POOL))]
    slots: asyncio.Queue[httpx2.AsyncClient] = asyncio.Queue()
    for i in range(k):
        slots.put_nowait(clients[i % len(clients)])

    async def one(seed: Any) -> str:
        reason = "no_attempt"
        for attempt in range(cfg.max_attempts):
            req = captions.build_request(seed.id, seed.seed, cfg, build_seed, attempt)
            body = {"model": "fake-model", "messages": req.messages, "max_tokens": p.max_new_tokens,
                    "temperature": p.temperature, "top_p": p.top_p, "seed": wire_seed(req.seed)}
            client = await slots.get()
            try:
                r = await client.post(url + "/v1/chat/completions", json=body)
            finally:
                slots.put_nowait(client)
            r.raise_for_status()
            choice = r.json()["choices"][0]
            reason = captions.validate(choice["message"]["content"] or "", choice["finish_reason"], cfg,
                                       seed.seed)[1] or "accepted"
            if reason == "accepted":
                break
        return reason

    try:
        return Counter(await asyncio.gather(*(one(s) for s in seeds)))
    finally:
        for c in clients:
            await c.aclose()


# --------------------------------------------------------------------------- (c) distilabel


def ensure_distilabel() -> Path:
    python = DISTILABEL_VENV / "bin" / "python"
    # an interrupted first run leaves a venv without distilabel: check the import, not the folder
    ready = python.exists() and subprocess.run([str(python), "-c", "import distilabel, openai"],
                                               capture_output=True).returncode == 0
    if not ready:
        print(f"creating {DISTILABEL_VENV} (pip install distilabel openai requests)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(DISTILABEL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "distilabel", "openai", "requests"], check=True)
    return python


def run_distilabel(server: FakeServer, k: int, seeds: list[Any], cfg: CaptionsSection, replicas: int,
                   work: Path) -> dict[str, Any]:
    python = ensure_distilabel()
    prompts = [captions.build_request(s.id, s.seed, cfg, 0, 0).messages[0]["content"] for s in seeds]
    p = cfg.sampling
    job = {"url": server.url, "model": "fake-model", "k": k, "replicas": replicas, "prompts": prompts,
           "generation_kwargs": {"max_new_tokens": p.max_new_tokens, "temperature": p.temperature, "top_p": p.top_p}}
    job_path = work / f"distilabel-k{k}-r{replicas}.json"
    job_path.write_text(json.dumps(job))
    server.reset()
    t0 = time.monotonic()
    proc = subprocess.run([str(python), str(ROOT / "bench" / "distilabel_captions.py"), str(job_path)],
                          capture_output=True, text=True, cwd=work,
                          env={**os.environ, "DISTILABEL_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"})
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"distilabel failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    reported = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**window(server.stats(series=True), len(seeds), k, wall), "replicas": replicas,
            "with_text": reported["with_text"]}


# --------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    lines = ["| K | client | rows/s | window s | wall s | requests | mean in-flight | p5 in-flight | max | mean/K "
             "| steady s | steady mean | steady p5 |",
             "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for k, by_client in results["runs"].items():
        for name, r in by_client.items():
            lines.append(f"| {k} | {name} | {r['rows_per_s']:.1f} | {r['window_s']:.1f} | {r['wall_s']:.1f} | "
                         f"{r['requests']} | {r['mean_in_flight']:.1f} | {r['p5_in_flight']:.0f} | "
                         f"{r['max_in_flight']} | {r['mean_over_k']:.3f} | {r['steady_s']:.1f} | "
                         f"{r['steady_mean_in_flight']:.1f} | {r['steady_p5_in_flight']:.0f} |")
    lines += ["", "| K | build/bare | build/best distilabel | build mean in-flight/K |", "|--:|--:|--:|--:|"]
    for k, r in results["runs"].items():
        if "build" not in r:
            continue
        b = r["build"]["rows_per_s"]
        bare = f"{b / r['bare']['rows_per_s']:.3f}" if "bare" in r else "-"
        distilabel = [v["rows_per_s"] for name, v in r.items() if name.startswith("distilabel")]
        dl = f"{b / max(distilabel):.3f}" if distilabel else "-"
        lines.append(f"| {k} | {bare} | {dl} | {r['build']['mean_over_k']:.3f} |")
    if results.get("kill"):
        lines += ["", "| K | killed after (answered) | in flight at kill | requests | unique | sent twice |",
                  "|--:|--:|--:|--:|--:|--:|"]
        for r in results["kill"]:
            lines.append(f"| {r['k']} | {r['killed_after_served']} | {r['in_flight_at_kill']} | "
                         f"{r['requests_total']} | {r['unique_requests']} | {r['sent_twice']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--k", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--median", type=float, default=2.0)
    ap.add_argument("--p99", type=float, default=20.0)
    ap.add_argument("--latency-scale", type=float, default=0.05)
    ap.add_argument("--invalid", type=float, default=0.05, help="share of invalid answers (forces retries)")
    ap.add_argument("--clients", default="build,bare,distilabel", help="comma-separated subset")
    ap.add_argument("--distilabel-replicas", type=int, nargs="+", default=[1, 4],
                    help="distilabel step replicas to try (input_batch_size = K / replicas); the best is compared")
    ap.add_argument("--no-kill", action="store_true", help="skip the kill -9 measurement")
    ap.add_argument("--seed", type=int, default=0, help="picks the kill moment")
    ap.add_argument("--json", type=Path, default=RESULTS)
    a = ap.parse_args()
    clients = a.clients.split(",")
    seeds, cfg, build_seed = caption_work(a.rows)
    results: dict[str, Any] = {"settings": {**vars(a), "json": str(a.json)}, "runs": {}, "kill": []}
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory(prefix="engine_bench_") as tmp, \
            serve(median=a.median, p99=a.p99, latency_scale=a.latency_scale, invalid=a.invalid) as server:
        work = Path(tmp)
        for k in a.k:
            runs = results["runs"].setdefault(str(k), {})
            if "build" in clients:
                runs["build"] = run_build(server, k, a.rows, work)
                _progress("build", k, runs["build"])
            if "bare" in clients:
                runs["bare"] = run_bare(server, k, seeds, cfg, build_seed)
                _progress("bare", k, runs["bare"])
            if "distilabel" in clients:
                for replicas in a.distilabel_replicas:
                    name = f"distilabel-r{replicas}"
                    runs[name] = run_distilabel(server, k, seeds, cfg, replicas, work)
                    _progress(name, k, runs[name])
            if not a.no_kill and "build" in clients:
                results["kill"].append(run_kill(server, k, a.rows, work, rng))
                print(f"kill k={k}: {results['kill'][-1]}", file=sys.stderr, flush=True)
    a.json.write_text(json.dumps(results, indent=1, default=str))
    print(table(results))


def _progress(name: str, k: int, r: dict[str, Any]) -> None:
    print(f"{name} k={k}: {r['rows_per_s']:.1f} rows/s, mean in-flight {r['mean_in_flight']:.1f}, "
          f"p5 {r['p5_in_flight']:.0f}, window {r['window_s']:.1f}s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
