"""A fake OpenAI-compatible LLM server: infinitely parallel, heavy-tailed latency, counters, injected faults.

One asyncio process (stdlib only: a minimal HTTP/1.1 server with keep-alive, so thousands of concurrent
requests cost one task each). It behaves like a GPU server that never runs out of batch slots:

- ``POST /v1/chat/completions``, ``POST /v1/completions``: each request waits a latency drawn from a
  lognormal (``median``, ``p99``, times ``latency_scale``), then answers with text from
  :mod:`fake_answers` (a function of the prompt, seed and max_tokens only).
- ``GET /v1/models``; ``GET /stats`` (counters and the in-flight time series sampled every
  ``sample_interval`` seconds as [time, in flight, requests received]; ``?series=0`` leaves it out;
  ``one_token`` counts requests for a single token, a client's health check, and ``first_work_request`` is
  when the first other one arrived);
  ``POST /stats/reset``; ``POST /control`` (JSON: config fields to change at run time, e.g. ``{"down": "503"}``).

Determinism: a request's identity is the hash of its prompt or messages, seed, max_tokens and schema.
Whether its answer is invalid (``invalid`` rate: too-short text / broken JSON) depends on that hash and
the server ``seed`` only, so a retry with a new sampling seed can succeed. Its latency depends on the
prompt and max_tokens only, so every client (with or without per-row seeds) and every retry of a row
meets the same work: benchmarks compare clients, not latency draws. Faults (500, 503, 429 +
Retry-After, connection reset, hang, invalid JSON body, empty completion) depend on the hash and how
many times the same request was received before (the attempt counter; ``duplicates`` in the stats
counts such resends), so resending the identical request can succeed too.

Run: ``python -m unicorn_datasets.testing.fake_openai_server --port 8000 --median 2 --p99 20``;
from Python: ``with serve(median=0.1, p99=1) as server: ... server.url, server.stats()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from unicorn_datasets.testing.fake_answers import answer, request_text, schema_of
from unicorn_datasets.testing.fake_http import ClientGone, Conn, send, send_json, wait_or_hangup
from unicorn_datasets.testing.fake_stats import ServerStats
from unicorn_datasets.testing.inflight import drain_time, inflight_summary  # noqa: F401  (re-exported for benches)

FAULTS = ("error_500", "error_503", "error_429", "reset", "hang", "bad_body", "empty")
_Z99 = 2.3263478740408408  # standard normal quantile at 0.99


@dataclass
class FakeServerConfig:
    median: float = 2.0  # seconds, before latency_scale
    p99: float = 20.0
    latency_scale: float = 1.0  # multiplies every latency (0 = answer at once)
    invalid: float = 0.0  # share of answers that are too short / broken JSON
    seed: int = 0  # server seed: changes latencies, invalid picks and faults
    error_500: float = 0.0
    error_503: float = 0.0
    error_429: float = 0.0
    reset: float = 0.0  # close the socket mid-response
    hang: float = 0.0  # never answer (until hang_seconds or the client hangs up)
    bad_body: float = 0.0  # 200 with a body that is not JSON
    empty: float = 0.0  # 200 with an empty completion
    retry_after: float = 1.0  # Retry-After seconds sent with 429
    hang_seconds: float = 3600.0
    down: str = ""  # "": up; "503": answer 503 to every generation; "refuse": reset every generation request
    model: str = "fake-model"
    sample_interval: float = 0.05  # in-flight sampling period (seconds)

    def __post_init__(self) -> None:
        total = sum(getattr(self, f) for f in FAULTS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:.3f} > 1")
        if self.median <= 0 or self.p99 < self.median:
            raise ValueError("need 0 < median <= p99")
        if self.down not in ("", "503", "refuse"):
            raise ValueError("down must be '', '503' or 'refuse'")

    def latency(self, key: bytes) -> float:
        sigma = math.log(self.p99 / self.median) / _Z99
        z = statistics.NormalDist().inv_cdf(min(max(_uniform(key, self.seed, "latency"), 1e-12), 1 - 1e-12))
        return self.latency_scale * self.median * math.exp(sigma * z)


def _uniform(*parts: Any) -> float:
    """A uniform [0, 1) draw that is a pure function of its arguments."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FakeOpenAIServer:
    def __init__(self, config: FakeServerConfig) -> None:
        self.config = config
        self.stats = ServerStats()

    async def sample(self) -> None:
        while True:
            st = self.stats
            st.series.append((st.now(), st.in_flight, st.received["chat"] + st.received["completion"]))
            await asyncio.sleep(self.config.sample_interval)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(reader)
        try:
            while True:
                req = await conn.read_request()
                if req is None:
                    return
                method, target, headers, body = req
                keep = await self.route(method, target, body, conn, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, ClientGone):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def route(self, method: str, target: str, raw: bytes, conn: Conn, writer: asyncio.StreamWriter) -> bool:
        path, _, query = target.partition("?")
        path = path.rstrip("/")
        if method == "GET" and path == "/stats":
            return await send_json(writer, 200, self.stats.as_dict(with_series="series=0" not in query))
        if method == "POST" and path == "/stats/reset":
            self.stats.reset()
            return await send_json(writer, 200, {"reset": True})
        if method == "POST" and path == "/control":
            return await send_json(writer, *self.control(raw))
        if method == "GET" and path == "/v1/models":
            self.stats.received["models"] += 1
            return await send_json(writer, 200, {"object": "list", "data": [
                {"id": self.config.model, "object": "model", "owned_by": "fake", "created": 0}]})
        kinds = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
        if method == "POST" and path in kinds:
            return await self.generate(kinds[path], raw, conn, writer)
        self.stats.received["other"] += 1
        return await send_json(writer, 404, {"error": {"message": f"no route {method} {path}"}})

    def control(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        try:
            changes = json.loads(raw or b"{}")
            known = {f.name for f in fields(FakeServerConfig)}
            bad = set(changes) - known
            if bad:
                return 400, {"error": {"message": f"unknown config fields {sorted(bad)}"}}
            self.config = FakeServerConfig(**{**asdict(self.config), **changes})
        except (ValueError, TypeError) as e:
            return 400, {"error": {"message": str(e)}}
        return 200, asdict(self.config)

    async def generate(self, kind: str, raw: bytes, conn: Conn, writer: asyncio.StreamWriter) -> bool:
        st, cfg = self.stats, self.config
        st.received[kind] += 1
        if cfg.down == "refuse":  # the control routes stay up, so a test can bring the server back
            st.failed["down"] += 1
            writer.transport.abort()
            return False
        if st.first_request is None:
            st.first_request = st.now()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError as e:
            st.failed["bad_request"] += 1
            return await send_json(writer, 400, {"error": {"message": f"invalid JSON body: {e}"}})
        if body.get("stream"):
            st.failed["bad_request"] += 1
            return await send_json(writer, 400, {"error": {"message": "streaming is not supported"}})
        if cfg.down == "503":
            st.failed["down"] += 1
            return await send_json(writer, 503, {"error": {"message": "server is down"}})
        if (body.get("max_tokens") or body.get("max_completion_tokens")) == 1:
            st.one_token += 1
        elif st.first_work_request is None:
            st.first_work_request = st.now()
        key = request_key(body)
        attempt = st.attempts[key]
        st.attempts[key] += 1
        if attempt:
            st.duplicates += 1
        fault = _pick_fault(cfg, key, attempt)
        if fault in ("error_500", "error_503", "error_429"):
            st.failed[fault] += 1
            status = int(fault[-3:])
            extra = {"Retry-After": f"{cfg.retry_after:g}"} if status == 429 else {}
            return await send_json(writer, status, {"error": {"message": f"injected {status}"}}, extra)
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            delay = cfg.hang_seconds if fault == "hang" else cfg.latency(_work_key(body))
            if fault == "reset":
                delay /= 2
            if fault == "hang":
                st.failed["hang"] += 1
            if not await wait_or_hangup(delay, conn):
                st.cancelled += fault != "hang"
                return False
            if fault == "hang":
                return False
            if fault == "reset":
                st.failed["reset"] += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"id\"")
                await writer.drain()
                writer.transport.abort()
                return False
            if fault == "bad_body":
                st.failed["bad_body"] += 1
                return await send(writer, 200, b'{"id": "x", "choices": [{"message": {"content": ', {})
            invalid = _uniform(key, cfg.seed, "invalid") < cfg.invalid
            ans = answer(body, invalid=invalid)
            text, tokens, finish = ans.text, ans.completion_tokens, ans.finish_reason
            if fault == "empty":
                st.failed["empty"] += 1
                text, tokens, finish = "", 0, "stop"
            else:
                text, finish = _apply_stop(text, finish, body.get("stop"))
                st.served[kind] += 1
                st.invalid += invalid
            st.completion_tokens += tokens
            return await send_json(writer, 200, _payload(kind, cfg.model, key, body, text, tokens, finish))
        finally:
            st.in_flight -= 1
            st.last_response = st.now()


def request_key(body: dict[str, Any]) -> bytes:
    """A request's identity: what its answer depends on (not the model name or the client's other fields),
    so a bare client and a full build that ask the same thing see the same latency and answer."""
    ident = [request_text(body), body.get("seed"), body.get("max_tokens") or body.get("max_completion_tokens"),
             schema_of(body)]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).digest()


def _work_key(body: dict[str, Any]) -> bytes:
    ident = [request_text(body), body.get("max_tokens") or body.get("max_completion_tokens")]
    return hashlib.sha256(json.dumps(ident).encode()).digest()


def _pick_fault(cfg: FakeServerConfig, key: bytes, attempt: int) -> str | None:
    u, edge = _uniform(key, cfg.seed, "fault", attempt), 0.0
    for name in FAULTS:
        edge += getattr(cfg, name)
        if u < edge:
            return name
    return None


def _apply_stop(text: str, finish: str, stop: Any) -> tuple[str, str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], "stop") if cut >= 0 else (text, finish)


def _payload(kind: str, model: str, key: bytes, body: dict[str, Any], text: str, tokens: int,
             finish: str) -> dict[str, Any]:
    prompt_tokens = max(1, len(json.dumps(body.get("messages") or body.get("prompt") or "")) // 4)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
    common = {"id": "cmpl-" + key.hex()[:24], "created": 0, "model": body.get("model") or model, "usage": usage}
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                  "logprobs": None}
        return {**common, "object": "chat.completion", "choices": [choice]}
    return {**common, "object": "text_completion",
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


async def _main(config: FakeServerConfig, host: str, port: int) -> None:
    app = FakeOpenAIServer(config)
    server = await asyncio.start_server(app.handle, host, port, backlog=4096, limit=2**20)
    bound = server.sockets[0].getsockname()
    print(f"fake-openai-server listening on http://{host}:{bound[1]}", flush=True)
    sampler = asyncio.ensure_future(app.sample())
    try:
        async with server:
            await server.serve_forever()
    finally:
        sampler.cancel()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m unicorn_datasets.testing.fake_openai_server",
                                description="Fake OpenAI-compatible LLM server (see the module docstring).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on the first line)")
    for f in fields(FakeServerConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    return p


def main(argv: list[str] | None = None) -> None:
    args = vars(_parser().parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    try:
        config = FakeServerConfig(**args)
    except ValueError as e:
        sys.exit(f"fake-openai-server: {e}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(config, host, port))


# --------------------------------------------------------------------------- from Python


class FakeServer:
    """A handle on a running fake server: its URL and its counters."""

    def __init__(self, url: str, proc: subprocess.Popen | None = None) -> None:
        self.url = url
        self.proc = proc

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stats(self, series: bool = False) -> dict[str, Any]:
        return self._call("GET", "/stats" + ("" if series else "?series=0"))

    def reset(self) -> None:
        self._call("POST", "/stats/reset", {})

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "/control", changes)


@contextlib.contextmanager
def serve(host: str = "127.0.0.1", **config: Any) -> Iterator[FakeServer]:
    """Start the server in a subprocess on a free port; stop it on exit."""
    FakeServerConfig(**config)  # fail here, not in the child
    args = [f"--{k.replace('_', '-')}={v}" for k, v in config.items()]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    err = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, "-m", "unicorn_datasets.testing.fake_openai_server",
                             "--host", host, "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on " not in line:
            proc.kill()
            proc.wait()
            err.seek(0)
            raise RuntimeError(f"fake server did not start: {err.read().strip()[-500:]}")
        yield FakeServer(line.split("listening on ", 1)[1].strip(), proc)
    finally:
        err.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
