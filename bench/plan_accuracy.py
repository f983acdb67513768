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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--k", type=int, default=64, help="llm.max_in_flight")
    ap.add_argument("--probe", type=int, default=200, help="probe rows (Stage 1)")
    ap.add_argument("--median", type=float, default=0.2)
    ap.add_argument("--sigma", type=float, default=0.6)
    args = ap.parse_args()
    p99 = args.median * math.exp(args.sigma * Z99)
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp, serve(median=args.median, p99=p99) as server:
        work = Path(tmp)
        plan_file = work / "plan.json"
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "unicorn_datasets.cli", "plan",
                               *plan_args(server.url, args.k, args.rows), "--probe", str(args.probe),
                               "--save", str(plan_file)], capture_output=True, text=True, env=_env(work))
        plan_wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"plan failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        probe_requests = sum(server.stats()["received"].get(x, 0) for x in ("chat", "completion"))
        plan = json.loads(plan_file.read_text())
        print(proc.stdout)

        server.reset()
        out = work / "build"
        t0 = time.monotonic()
        cmd = [sys.executable, str(ROOT / "build.py"), *build_args(server.url, str(out), args.k, args.rows),
               "--plan", str(plan_file)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(work))
        build_wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"build failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        real = window(server.stats(series=True), args.rows, args.k, build_wall)
        manifest = json.loads((out / "artifacts" / "build_manifest.json").read_text())

    stage = next(iter(plan["stages"]))
    predicted = plan["stages"][stage]
    req_err = predicted["requests"] / real["requests"] - 1
    sec_err = predicted["seconds"] / real["window_s"] - 1
    recorded = manifest["plan"]["stages"][stage]["actual"]
    result = {"rows": args.rows, "k": args.k, "probe_rows": args.probe, "probe_requests": probe_requests,
              "plan_wall_s": round(plan_wall, 1), "build_wall_s": round(build_wall, 1),
              "requests": {"plan": predicted["requests"], "build": real["requests"], "error": round(req_err, 4)},
              "seconds": {"plan": predicted["seconds"], "build_window": round(real["window_s"], 2),
                          "build_engine": recorded["seconds"], "error": round(sec_err, 4)},
              "build_mean_in_flight": round(real["mean_in_flight"], 1)}
    print(json.dumps(result, indent=2))
    ok = abs(req_err) <= 0.10 and abs(sec_err) <= 0.25 and probe_requests <= 256
    print(f"requests: plan {predicted['requests']} vs build {real['requests']} ({req_err:+.1%}, bound 10 %); "
          f"seconds: plan {predicted['seconds']} vs build {real['window_s']:.2f} ({sec_err:+.1%}, bound 25 %); "
          f"probe {probe_requests} requests (bound 256): {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
