"""How close `unicorn plan` comes to the build it predicts, against one fake OpenAI-compatible server.

    python bench/plan_accuracy.py                      # 2,000 rows, window 64, probe 200 rows
    python bench/plan_accuracy.py --rows 500 --probe 64

The server answers with heavy-tailed latency (lognormal, median 0.2 s, sigma 0.6: p99 = 0.81 s) and never
runs out of batch slots. Demo recipe, Stage 1 only, chat prompts, `captions.min_seed_cosine=0` (the same
build as bench/engine_throughput.py). First `unicorn plan ... --probe N --save PLAN` (its requests are
counted by the server), then the build itself with `--plan PLAN`. Both sides of the comparison are
measured by the server: the build's requests received, and its window (first request received -> last
response sent), so process start-up and dataset assembly are left out. Passes when the plan's requests are
within 10 % and its seconds within 25 % of the build's, from a probe of <= 256 requests.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_throughput import _env, build_args, window  # noqa: E402  (the same build, the same server window)

from unicorn_datasets.testing.fake_openai_server import serve  # noqa: E402

Z99 = 2.3263478740408408


def plan_args(url: str, k: int, rows: int) -> list[str]:
    """`unicorn plan` takes the build's arguments: those of the build below, without --out."""
    args = build_args(url, "unused", k, rows)
    i = args.index("--out")
    return args[:i] + args[i + 2:]


def one_pair(server: Any, work: Path, rows: int, k: int, probe: int) -> dict[str, Any]:
    """`unicorn plan --save`, then the build with `--plan`; both counted and timed by the server."""
    server.reset()
    plan_file = work / "plan.json"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "unicorn_datasets.cli", "plan", *plan_args(server.url, k, rows),
                           "--probe", str(probe), "--save", str(plan_file)], capture_output=True, text=True,
                          env=_env(work))
    plan_wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"plan failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    probe_requests = sum(server.stats()["received"].get(x, 0) for x in ("chat", "completion"))
    plan = json.loads(plan_file.read_text())

    server.reset()
    out = work / "build"
    cmd = [sys.executable, str(ROOT / "build.py"), *build_args(server.url, str(out), k, rows), "--overwrite",
           "--plan", str(plan_file)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(work))
    build_wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"build failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    real = window(server.stats(series=True), rows, k, build_wall)
    manifest = json.loads((out / "artifacts" / "build_manifest.json").read_text())
    stage = next(iter(plan["stages"]))
    predicted = plan["stages"][stage]
    probed = plan["probe"]["stages"][stage]
    return {"probe_requests": probe_requests, "plan_wall_s": round(plan_wall, 1), "build_wall_s": round(build_wall, 1),
            "plan_requests": predicted["requests"], "build_requests": real["requests"],
            "requests_error": round(predicted["requests"] / real["requests"] - 1, 4),
            "plan_s": predicted["seconds"], "build_window_s": round(real["window_s"], 2),
            "seconds_error": round(predicted["seconds"] / real["window_s"] - 1, 4),
            "manifest_actual_s": manifest["plan"]["stages"][stage]["actual"]["seconds"],
            "probe_steady_rows_per_s": probed["ramp"][-1]["steady_rows_per_s"],
            "build_rows_per_s": round(real["rows_per_s"], 1), "build_mean_in_flight": round(real["mean_in_flight"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--k", type=int, default=64, help="llm.max_in_flight")
    ap.add_argument("--probe", type=int, default=200, help="probe rows (Stage 1)")
    ap.add_argument("--median", type=float, default=0.2)
    ap.add_argument("--sigma", type=float, default=0.6)
    ap.add_argument("--repeat", type=int, default=3, help="plan + build pairs (the box's load varies between them)")
    args = ap.parse_args()
    p99 = args.median * math.exp(args.sigma * Z99)
    pairs = []
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp, serve(median=args.median, p99=p99) as server:
        for r in range(args.repeat):
            pair = one_pair(server, Path(tmp), args.rows, args.k, args.probe)
            pairs.append(pair)
            print(f"pair {r + 1}: " + json.dumps(pair), flush=True)
    med = {k: statistics.median(p[k] for p in pairs) for k in ("requests_error", "seconds_error", "build_window_s")}
    builds = [p["build_window_s"] for p in pairs]
    print(f"\nrows {args.rows}, max_in_flight {args.k}, probe {args.probe} rows (at most "
          f"{max(p['probe_requests'] for p in pairs)} requests), lognormal latency median {args.median} s sigma "
          f"{args.sigma}, {args.repeat} plan+build pair(s)")
    print(f"{'pair':<6}{'plan req':>10}{'build req':>11}{'req err':>9}{'plan s':>9}{'build s':>9}{'s err':>9}")
    for i, p in enumerate(pairs, 1):
        print(f"{i:<6}{p['plan_requests']:>10}{p['build_requests']:>11}{p['requests_error']:>+9.1%}"
              f"{p['plan_s']:>9.1f}{p['build_window_s']:>9.2f}{p['seconds_error']:>+9.1%}")
    spread = (max(builds) - min(builds)) / med["build_window_s"]
    ok = (abs(med["requests_error"]) <= 0.10 and abs(med["seconds_error"]) <= 0.25
          and max(p["probe_requests"] for p in pairs) <= 256)
    print(f"median: requests {med['requests_error']:+.1%} (bound 10 %), seconds {med['seconds_error']:+.1%} "
          f"(bound 25 %); the builds' own spread {spread:.0%} of their median: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
