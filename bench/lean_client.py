"""Side by side against one fake server: the build (checks off / on) vs a bare aiohttp client vs a bare httpx2
client vs distilabel, per K and latency: requests/s, mean in flight (middle 80 %) and CPU per request.

    python bench/lean_client.py --rows 1024 --k 64 256 --latency 0.5 0.1 --checks off on

Every client runs as its own process and sends Stage-1 caption requests built by `captions.build_request`
from the recipe's seeds (the peers validate and retry like the build). All rates come from the server's
own counters over its window (first request received -> last response sent): requests/s, and the mean of
its 50 ms in-flight samples over the middle 80 % of that window. CPU per request is the client process's
CPU time (user + system, sampled from /proc every 50 ms) over the same window divided by the requests the
server received in it, so start-up, model loading and assembly are left out. Ratios are taken within one
run. Latency is lognormal with the given median and `--sigma`. Two more rates take the fixed costs apart:
"work" counts from the first request for more than one token (a fresh build first asks its server for one
token, one latency before any row), "steady" is 80 % of the requests over the time from the server's 10th
to its 90th percent received (no ramp-up, no tail).

`unicorn-1.2m` holds 528 seeds offline (264 shipped captions + their domain share); `--seed-captions N`
gives the checks-off build and the peers N composed captions (`bench/caption_seeds.py`) with `--seeds`, as a
real build reads its COCO/CC3M captions, so a 3,072-row run sends 3,072 rows.

- build:        `build.py --recipe R --stages captions --llm-endpoint URL --set llm.max_in_flight=K
                --prompt-mode chat`; checks off: `--set captions.min_seed_cosine=0`; checks on: the demo recipe
                (its MiniLM seed-cosine check, min_seed_cosine 0.3), whose encoder ships offline
- aiohttp:      one ClientSession (a connector of K connections) and a semaphore of K
- httpx2:       ceil(K / 32) AsyncClients of 32 connections (one big httpx pool costs O(pool) CPU per request)
- distilabel:   bench/engine_throughput.py's job (TextGeneration + OpenAILLM, its own venv), if that venv exists or
                can be built; otherwise left out and said so
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from unicorn_datasets.testing.fake_openai_server import FakeServer, inflight_summary, serve  # noqa: E402

_Z99 = 2.3263478740408408
TICK = os.sysconf("SC_CLK_TCK")


def build_args(recipe: str, url: str, out: str, k: int, rows: int, checks: bool,
               seeds: str | None = None) -> list[str]:
    args = ["--recipe", recipe, "--out", out, "--llm-endpoint", url, "--stages", "captions", "--prompt-mode", "chat",
            "--set", f"llm.max_in_flight={k}", "--limit", str(rows), *(["--seeds", seeds] if seeds else [])]
    return args if checks else [*args, "--set", "captions.min_seed_cosine=0"]


# --------------------------------------------------------------------------- measuring a process


class CpuSampler:
    """(monotonic time, CPU seconds) of one process every 50 ms, from /proc/PID/stat."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples, self._stop = pid, list[tuple[float, float]](), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError, ValueError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            cpu = self._read()
            if cpu is not None:
                self.samples.append((time.monotonic(), cpu))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, t0: float, t1: float) -> float:
        def at(t: float) -> float:
            before = [c for s, c in self.samples if s <= t]
            return before[-1] if before else (self.samples[0][1] if self.samples else 0.0)
        return at(t1) - at(t0)


def measure(server: FakeServer, cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    server.reset()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    sampler = CpuSampler(proc.pid)
    out, err = proc.communicate()
    sampler.stop()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed (exit {proc.returncode}):\n{err[-3000:]}")
    before = time.monotonic()
    stats = server.stats(series=True)
    offset = (before + time.monotonic()) / 2 - stats["now"]  # server clock -> ours
    start, end = stats["first_request"] or 0.0, stats["last_response"] or 0.0
    span = max(end - start, 1e-9)
    mid = inflight_summary(stats["series"], start + 0.1 * span, end - 0.1 * span)
    requests = sum(stats["received"].get(x, 0) for x in ("chat", "completion"))
    cpu = sampler.between(start + offset, end + offset)
    # The work requests alone: the build first asks each server for one token (its health check, one latency
    # before any row). "work": from the first request for more than one token. "steady": 80 % of the requests
    # over the time the server took to receive its 10th to its 90th percent (no ramp-up, no tail).
    work_start = stats["first_work_request"] or start
    work = requests - stats["one_token"]
    w_span = max(end - work_start, 1e-9)

    def received_by(share: float) -> float:
        return next((t for t, _, n in stats["series"] if n >= share * requests), end)
    t10, t90 = received_by(0.1), received_by(0.9)
    steady = 0.8 * requests / (t90 - t10) if t90 > t10 else 0.0
    return {"requests": requests, "window_s": span, "wall_s": wall, "requests_per_s": requests / span,
            "work_requests": work, "work_window_s": w_span, "work_requests_per_s": work / w_span,
            "steady_requests_per_s": steady,
            "mean_in_flight_mid80": mid["mean"], "cpu_s": cpu, "cpu_ms_per_request": 1000 * cpu / max(1, requests),
            "stdout_tail": out.strip().splitlines()[-1:] if out.strip() else []}


# --------------------------------------------------------------------------- the bare peers (as child processes)


def _work(recipe: str, rows: int, seeds: str | None) -> tuple[list[Any], Any, int]:
    from unicorn_datasets import cli
    from unicorn_datasets.pipeline.loop import collect_seeds

    args = cli.parser().parse_args(["build", *build_args(recipe, "http://unused", "unused", 64, rows, False, seeds)])
    r = cli._recipe_from_args(args)
    return collect_seeds(r)[0][:rows], r.captions, r.seed


def peer(kind: str, url: str, k: int, recipe: str, rows: int, seed_file: str | None) -> None:
    from unicorn_datasets.generation.server.dialects import wire_seed
    from unicorn_datasets.stages import captions

    seeds, cfg, build_seed = _work(recipe, rows, seed_file)
    p = cfg.sampling

    def body(s: Any, attempt: int) -> dict[str, Any]:
        req = captions.build_request(s.id, s.seed, cfg, build_seed, attempt, "chat")
        return {"model": "fake-model", "messages": req.messages, "max_tokens": p.max_new_tokens,
                "temperature": p.temperature, "top_p": p.top_p, "seed": wire_seed(req.seed)}

    async def rows_with(post: Any) -> list[str]:
        gate = asyncio.Semaphore(k)

        async def one(s: Any) -> str:
            reason = "none"
            for attempt in range(cfg.max_attempts):
                async with gate:
                    data = await post(url + "/v1/chat/completions", body(s, attempt))
                choice = data["choices"][0]
                reason = captions.validate(choice["message"]["content"] or "", choice["finish_reason"], cfg,
                                           s.seed)[1] or "accepted"
                if reason == "accepted":
                    break
            return reason

        return list(await asyncio.gather(*(one(s) for s in seeds)))

    async def with_aiohttp() -> list[str]:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=k),
                                         timeout=aiohttp.ClientTimeout(total=600)) as session:
            async def post(u: str, b: dict[str, Any]) -> Any:
                async with session.post(u, data=json.dumps(b).encode(),
                                        headers={"content-type": "application/json"}) as r:
                    r.raise_for_status()
                    return json.loads(await r.read())
            return await rows_with(post)

    async def with_httpx2() -> list[str]:
        import httpx2

        limits = httpx2.Limits(max_connections=32, max_keepalive_connections=32)
        clients = [httpx2.AsyncClient(timeout=600, limits=limits) for _ in range(math.ceil(k / 32))]
        busy = [0] * len(clients)

        async def post(u: str, b: dict[str, Any]) -> Any:
            i = min(range(len(clients)), key=busy.__getitem__)
            busy[i] += 1
            try:
                r = await clients[i].post(u, json=b)
            finally:
                busy[i] -= 1
            r.raise_for_status()
            return r.json()
        try:
            return await rows_with(post)
        finally:
            for c in clients:
                await c.aclose()

    reasons = asyncio.run(with_aiohttp() if kind == "aiohttp" else with_httpx2())
    print(json.dumps({"rows": len(reasons), "accepted": reasons.count("accepted")}))


# --------------------------------------------------------------------------- distilabel


def distilabel_cmd(url: str, k: int, recipe: str, rows: int, work: Path, seed_file: str | None) -> list[str] | None:
    python = ROOT / "bench" / ".venv-distilabel" / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import distilabel, openai"],
                                             capture_output=True).returncode != 0:
        return None
    from unicorn_datasets.stages import captions

    seeds, cfg, _ = _work(recipe, rows, seed_file)
    p = cfg.sampling
    job = {"url": url, "model": "fake-model", "k": k, "replicas": 1,
           "prompts": [captions.build_request(s.id, s.seed, cfg, 0, 0, "chat").messages[0]["content"] for s in seeds],
           "generation_kwargs": {"max_new_tokens": p.max_new_tokens, "temperature": p.temperature, "top_p": p.top_p}}
    path = work / f"distilabel-{k}.json"
    path.write_text(json.dumps(job))
    return [str(python), str(ROOT / "bench" / "distilabel_captions.py"), str(path)]


# --------------------------------------------------------------------------- the grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--k", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--latency", type=float, nargs="+", default=[0.5, 0.1], help="median seconds")
    ap.add_argument("--sigma", type=float, default=0.25, help="lognormal sigma of the latency")
    ap.add_argument("--invalid", type=float, default=0.05, help="share of too-short answers (forces retries)")
    ap.add_argument("--checks", nargs="+", default=["off", "on"], help="build with model-based checks off / on")
    ap.add_argument("--recipe", default="unicorn-1.2m", help="recipe of the checks-off build and of the peers")
    ap.add_argument("--checks-recipe", default="demo", help="recipe of the checks-on build (its encoder offline)")
    ap.add_argument("--clients", default="build,aiohttp,httpx2,distilabel")
    ap.add_argument("--seed-captions", type=int, default=0, metavar="N",
                    help="give the checks-off build and the peers N composed caption seeds (bench/caption_seeds.py) "
                         "with --seeds, as a real unicorn-1.2m build reads its COCO/CC3M captions; 0: the recipe's own")
    ap.add_argument("--seeds", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "lean_client.json")
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer:
        return peer(a.peer, a.url, a.k[0], a.recipe, a.rows, a.seeds)
    clients = a.clients.split(",")
    results: list[dict[str, Any]] = []
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    with tempfile.TemporaryDirectory(prefix="lean_client_") as tmp:
        work = Path(tmp)
        env["HF_DATASETS_CACHE"] = str(work / "hf_cache")
        seed_file = None
        if a.seed_captions:
            from caption_seeds import write_caption_seeds
            seed_file = str(write_caption_seeds(work / "caption_seeds.txt", a.seed_captions))
        for latency in a.latency:
            p99 = latency * math.exp(a.sigma * _Z99)
            with serve(median=latency, p99=p99, invalid=a.invalid) as server:
                for k in a.k:
                    runs: dict[str, list[str] | None] = {}
                    if "build" in clients:
                        for checks in a.checks:
                            on = checks == "on"
                            recipe = a.checks_recipe if on else a.recipe
                            runs[f"build (checks {checks})"] = [
                                sys.executable, str(ROOT / "build.py"),
                                *build_args(recipe, server.url, str(work / "out"), k, a.rows, on,
                                            None if on else seed_file), "--overwrite"]
                    for kind in ("aiohttp", "httpx2"):
                        if kind in clients:
                            runs[f"bare {kind}"] = [sys.executable, __file__, "--peer", kind, "--url", server.url,
                                                    "--k", str(k), "--recipe", a.recipe, "--rows", str(a.rows),
                                                    *(["--seeds", seed_file] if seed_file else [])]
                    if "distilabel" in clients:
                        runs["distilabel"] = distilabel_cmd(server.url, k, a.recipe, a.rows, work, seed_file)
                    for name, cmd in runs.items():
                        if cmd is None:
                            results.append({"k": k, "latency": latency, "client": name, "skipped":
                                            "no bench/.venv-distilabel (pip install distilabel openai failed offline)"})
                            continue
                        r = {"k": k, "latency": latency, "client": name, **measure(server, cmd, env)}
                        results.append(r)
                        # the request count too: a recipe whose seed shares cap it offline (unicorn-1.2m: 528
                        # seeds) sends fewer than --rows, and a short run measures mostly ramp-up
                        print(f"K={k} latency={latency} {name}: {r['requests']} requests, "
                              f"{r['requests_per_s']:.1f} req/s ({r['work_requests_per_s']:.1f} from the first "
                              f"work request, {r['steady_requests_per_s']:.1f} steady), in flight (mid 80%) "
                              f"{r['mean_in_flight_mid80']:.1f}, CPU {r['cpu_ms_per_request']:.2f} ms/request",
                              file=sys.stderr, flush=True)
    a.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(a).items()}, "results": results}, indent=1))
    print(table(results))


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| latency s | K | client | requests | requests/s | vs bare aiohttp | work req/s | vs bare | "
             "steady req/s | vs bare | mean in flight (mid 80 %) | CPU ms/request |",
             "|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['latency']} | {r['k']} | {r['client']} |" + " - |" * 8 + f" {r['skipped']} |")
            continue
        bare = next((x for x in results if x["k"] == r["k"] and x["latency"] == r["latency"]
                     and x["client"] == "bare aiohttp"), None)

        def vs(key: str, r: dict[str, Any] = r, bare: dict[str, Any] | None = bare) -> str:
            return f"{r[key] / bare[key]:.2f}" if bare and bare[key] else "-"
        lines.append(f"| {r['latency']} | {r['k']} | {r['client']} | {r['requests']} | {r['requests_per_s']:.1f} | "
                     f"{vs('requests_per_s')} | {r['work_requests_per_s']:.1f} | {vs('work_requests_per_s')} | "
                     f"{r['steady_requests_per_s']:.1f} | {vs('steady_requests_per_s')} | "
                     f"{r['mean_in_flight_mid80']:.1f} | {r['cpu_ms_per_request']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
