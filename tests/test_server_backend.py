"""ServerBackend against real HTTP servers on 127.0.0.1: `transformers serve` on a tiny local model,
stdlib OpenAI-compatible and TGI-like servers, and a fault-injecting proxy. Every server is stopped."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest

from unicorn_datasets.generation import make_backend
from unicorn_datasets.generation.base import GenerationRequest, RequestFailed, SamplingParams
from unicorn_datasets.generation.server import ServerBackend
from unicorn_datasets.recipe import LLMSection

SCHEMA = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
FAST = {"backoff": 0.02, "max_backoff": 0.1, "cooldown": 0.5}  # keep retry sleeps tiny in tests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A ThreadingHTTPServer on a free 127.0.0.1 port, served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output readable
        pass

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        return json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")


class FakeLLM(_Server):
    """Deterministic LLM server: the answer is built from the request, so order and wire format show.

    kind="openai": /v1/models, /v1/chat/completions, /v1/completions (as vLLM / SGLang / llama.cpp).
    kind="tgi": /info, POST / (TGI native, with details) and /v1/chat/completions (TGI's json form).
    """

    def __init__(self, kind: str = "openai", usage: bool = True) -> None:
        self.kind, self.usage = kind, usage
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        super().__init__(_FakeHandler)

    def answer(self, source: str, body: dict[str, Any], max_tokens: int) -> tuple[str, str, int]:
        if source == "BAD":
            raise ValueError("bad request")
        words = f"echo {source} seed {body.get('seed')}".split()
        finish = "length" if len(words) > max_tokens else "stop"
        words = words[:max_tokens]
        return " ".join(words), finish, len(words)


class _FakeHandler(_Quiet):
    def do_GET(self) -> None:
        srv: FakeLLM = self.server.owner  # type: ignore[attr-defined]
        if srv.kind == "tgi" and self.path == "/info":
            return self._json(200, {"model_id": "tiny/tgi-model", "version": "3.3.0", "max_stop_sequences": 4,
                                    "router": "text-generation-router"})
        if srv.kind == "openai" and self.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [{"id": "tiny-served", "owned_by": "vllm"}]})
        self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        srv: FakeLLM = self.server.owner  # type: ignore[attr-defined]
        body = self._body()
        with srv.lock:
            srv.bodies.append({"path": self.path, **body})
            srv.auth.append(self.headers.get("authorization"))
        try:
            if self.path == "/v1/chat/completions":
                last = body["messages"][-1]["content"]
                text, finish, n = srv.answer(last, body, body.get("max_tokens", 99))
                rf = body.get("response_format")
                if rf is not None:
                    text = json.dumps({"echo": text, "format": rf["type"]})
                out = {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": finish}]}
                if srv.usage:
                    out["usage"] = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
                return self._json(200, out)
            if srv.kind == "openai" and self.path == "/v1/completions":
                text, finish, n = srv.answer(body["prompt"], body, body.get("max_tokens", 99))
                out = {"id": "x", "object": "text_completion", "created": 0, "model": body.get("model"),
                       "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
                if srv.usage:
                    out["usage"] = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
                return self._json(200, out)
            if srv.kind == "tgi" and self.path == "/":
                p = body["parameters"]
                text, finish, n = srv.answer(body["inputs"], p, p.get("max_new_tokens", 99))
                tgi_finish = "length" if finish == "length" else "eos_token"
                return self._json(200, [{"generated_text": text, "details": {
                    "finish_reason": tgi_finish, "generated_tokens": n, "seed": p.get("seed"), "prefill": [],
                    "tokens": []}}])
        except (ValueError, KeyError) as e:
            return self._json(400, {"error": str(e), "error_type": "validation"})
        self._json(404, {"error": "not found"})


class FaultProxy(_Server):
    """Forwards to `upstream`, except: requests numbered in `fail` get 503, those in `drop` get their
    connection closed without an answer, those in `delay` stall (seconds) first. `only_post` numbers
    POSTs only (the backend's GET probes then pass untouched)."""

    def __init__(self, upstream: str, fail: tuple[int, ...] = (), drop: tuple[int, ...] = (),
                 delay: dict[int, float] | None = None, always_fail: bool = False,
                 only_post: bool = False) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.fail, self.drop, self.delay = set(fail), set(drop), dict(delay or {})
        self.always_fail, self.only_post = always_fail, only_post
        self.count = 0
        self.faults: list[str] = []
        self.lock = threading.Lock()
        super().__init__(_ProxyHandler)


class _ProxyHandler(_Quiet):
    def _forward(self, method: str) -> None:
        p: FaultProxy = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        n = 0
        if method == "POST" or not p.only_post:
            with p.lock:
                p.count += 1
                n = p.count
        if p.always_fail or n in p.fail:
            p.faults.append(f"{n}:503")
            return self._json(503, {"error": "overloaded"})
        if n in p.drop:
            p.faults.append(f"{n}:drop")
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a disconnect, no response
            return
        if n in p.delay:
            p.faults.append(f"{n}:delay")
            time.sleep(p.delay[n])
        conn = http.client.HTTPConnection(p.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(method, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        try:
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                    self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a stalled request
            pass

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    """Collects servers a test starts and stops them all, pass or fail."""
    started: list[_Server] = []
    yield started
    for s in started:
        s.stop()


def _dead_url() -> str:
    return f"http://127.0.0.1:{_free_port()}"  # nothing listens there: connection refused


def _chat(n: int, schema: dict | None = None) -> list[GenerationRequest]:
    return [GenerationRequest(key=f"row-{i}", seed=1000 + i, messages=[{"role": "user", "content": f"q{i}"}],
                              json_schema=schema) for i in range(n)]


# ---- stdlib servers ------------------------------------------------------------------------------


def test_openai_chat_wire_format_order_and_tokens(
    servers: list[_Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Offline mode (for the Hub) and a saved HF token must neither block nor leak to a local server.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_not_for_this_server")
    srv = FakeLLM("openai", usage=False)
    servers.append(srv)
    backend = ServerBackend([srv.url + "/v1/"], model="my-recipe-model", max_in_flight=8, timeout=5, **FAST)
    reqs = _chat(12, SCHEMA)
    reqs[3] = GenerationRequest(key="row-3", seed=7, messages=[{"role": "user", "content": "q3 a b c d e f"}],
                                stop=("END",))
    out = backend.generate(reqs, SamplingParams(max_new_tokens=6, temperature=0.5, top_p=1.0))
    assert len(out) == 12
    for i, res in enumerate(out):
        if i == 3:
            assert res.text == "echo q3 a b c d"  # plain text, truncated by max_tokens
            assert res.finish_reason == "length"
        else:
            assert json.loads(res.text) == {"echo": f"echo q{i} seed {1000 + i}", "format": "json_schema"}
            assert res.finish_reason == "stop"
        assert res.extra["n_tokens_estimated"] is True  # this server sends no usage
        assert res.n_tokens == len(res.text.split())
    bodies = {b["messages"][-1]["content"].split()[0]: b for b in srv.bodies}
    # OpenAI form reaches the server verbatim (huggingface_hub would rewrite it to TGI's json_object).
    assert bodies["q0"]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA, "strict": True}}
    assert bodies["q3"]["stop"] == ["END"] and "response_format" not in bodies["q3"]
    assert bodies["q0"]["seed"] == 1000 and bodies["q0"]["max_tokens"] == 6 and "top_p" not in bodies["q0"]
    assert bodies["q0"]["model"] == "tiny-served"  # the one model the server lists wins over the recipe id
    assert set(srv.auth) == {None}  # no Hugging Face token leaks to a non-HF server
    info = backend.describe()
    assert info["backend"] == "server" and info["endpoints"] == [srv.url]
    assert info["servers"][0]["kind"] == "vllm" and info["servers"][0]["models"] == ["tiny-served"]


def test_openai_completions_route_and_token_handling(servers: list[_Server]) -> None:
    srv = FakeLLM("openai")
    servers.append(srv)
    url = srv.url.replace("http://", "http://user:sekrit-token@")
    backend = ServerBackend([url], chat=False, timeout=5, **FAST)
    reqs = [GenerationRequest(key=f"p{i}", seed=i, prompt=f"prompt{i}", json_schema=None if i else SCHEMA)
            for i in range(4)]
    out = backend.generate(reqs, SamplingParams(max_new_tokens=3, repetition_penalty=1.3))
    assert [r.text for r in out] == [f"echo prompt{i} seed" for i in range(4)]
    assert all(r.finish_reason == "length" and r.n_tokens == 3 for r in out)
    assert not any("n_tokens_estimated" in r.extra for r in out)  # usage came from the server
    first = next(b for b in srv.bodies if b.get("prompt") == "prompt0")
    assert first["path"] == "/v1/completions" and first["repetition_penalty"] == 1.3
    assert first["response_format"]["json_schema"]["schema"] == SCHEMA
    assert set(srv.auth) == {"Bearer sekrit-token"}
    assert "sekrit" not in json.dumps(backend.describe())


def test_tgi_text_generation_details_and_json_grammar(servers: list[_Server]) -> None:
    srv = FakeLLM("tgi")
    servers.append(srv)
    backend = ServerBackend([srv.url], chat=False, timeout=5, **FAST)
    reqs = [GenerationRequest(key="a", seed=5, prompt="hello", json_schema=SCHEMA),
            GenerationRequest(key="b", seed=6, prompt="x y z w", stop=("\n\n",))]
    out = backend.generate(reqs, SamplingParams(max_new_tokens=4, temperature=0.0))
    assert [r.text for r in out] == ["echo hello seed 5", "echo x y z"]
    assert [r.finish_reason for r in out] == ["stop", "length"]
    assert [r.extra["finish_reason_raw"] for r in out] == ["eos_token", "length"]
    assert [r.n_tokens for r in out] == [4, 4]
    a, b = sorted(srv.bodies, key=lambda x: x["inputs"])
    assert a["parameters"]["grammar"] == {"type": "json", "value": SCHEMA}
    assert a["parameters"]["details"] is True
    assert a["parameters"]["do_sample"] is False and "temperature" not in a["parameters"]  # TGI rejects 0
    assert b["parameters"]["stop"] == ["\n\n"]
    # Chat against TGI: huggingface_hub's rewrite into TGI's {"type": "json_object", "value": schema}.
    chat = ServerBackend([srv.url], timeout=5, **FAST)
    res = chat.generate(_chat(1, SCHEMA), SamplingParams(max_new_tokens=10))
    assert json.loads(res[0].text)["format"] == "json_object"
    assert srv.bodies[-1]["response_format"] == {"type": "json_object", "value": SCHEMA}
    info = chat.describe()
    assert info["model"] == "tiny/tgi-model" and info["servers"][0]["kind"] == "tgi"
    assert info["servers"][0]["version"] == "3.3.0"


def test_fault_proxy_retries_keep_order(servers: list[_Server]) -> None:
    srv = FakeLLM("openai")
    servers.append(srv)
    proxy = FaultProxy(srv.url, fail=(1, 2, 3), drop=(4,), delay={6: 1.5}, only_post=True)
    servers.append(proxy)
    backend = ServerBackend([proxy.url], max_in_flight=3, timeout=0.5, max_retries=4, **FAST)
    t0 = time.monotonic()
    out = backend.generate(_chat(10), SamplingParams(max_new_tokens=20))
    elapsed = time.monotonic() - t0
    assert [r.text for r in out] == [f"echo q{i} seed {1000 + i}" for i in range(10)]
    assert sorted(proxy.faults) == ["1:503", "2:503", "3:503", "4:drop", "6:delay"]
    assert sum(r.extra["attempts"] for r in out) == 10 + 5  # every fault cost exactly one retry
    assert elapsed < 10


def test_all_endpoints_down_raises_quickly(servers: list[_Server]) -> None:
    srv = FakeLLM("openai")
    servers.append(srv)
    always_503 = FaultProxy(srv.url, always_fail=True)
    servers.append(always_503)
    dead = _dead_url()
    # Two attempts per row stay under the failure run that declares the whole backend down (see
    # test_server_client.py): the first row out of retries is raised, and the batch stops.
    backend = ServerBackend([dead, always_503.url], max_in_flight=8, timeout=1, max_retries=1, **FAST)
    t0 = time.monotonic()
    with pytest.raises(RequestFailed) as err:
        backend.generate(_chat(8), SamplingParams(max_new_tokens=4))
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "row 'row-" in msg and "all 2 attempts failed" in msg
    assert dead in msg and always_503.url in msg
    assert "HTTP 503" in msg or "connection error" in msg  # a retry avoids the last endpoint only if another is free


def test_client_error_is_not_retried(servers: list[_Server]) -> None:
    srv = FakeLLM("openai")
    servers.append(srv)
    backend = ServerBackend([srv.url], timeout=5, max_retries=5, **FAST)
    reqs = [GenerationRequest(key="bad-row", seed=1, messages=[{"role": "user", "content": "BAD"}])]
    expected = r"row 'bad-row': endpoint http://127\.0\.0\.1:\d+ answered HTTP 400"
    with pytest.raises(RequestFailed, match=expected) as err:
        backend.generate(reqs, SamplingParams())
    assert err.value.reason == "server_error" and "HTTP 400" in err.value.error and "\n" not in err.value.error
    assert len([b for b in srv.bodies if b["path"] == "/v1/chat/completions"]) == 1


def test_one_dead_endpoint_all_served(servers: list[_Server]) -> None:
    srv = FakeLLM("openai")
    servers.append(srv)
    dead = _dead_url()
    llm = LLMSection(endpoints=(dead, srv.url), max_in_flight=6, timeout=2, max_retries=3)
    backend = make_backend(llm)
    assert isinstance(backend, ServerBackend)
    backend.backoff, backend.cooldown = 0.02, 30.0
    out = backend.generate(_chat(24), SamplingParams(max_new_tokens=8))
    assert [r.text for r in out] == [f"echo q{i} seed {1000 + i}" for i in range(24)]
    assert {r.extra["endpoint"] for r in out} == {srv.url}
    dead_ep = next(ep for ep in backend.endpoints if ep.url == dead)
    assert dead_ep.down_until > time.monotonic()  # skipped for a while, not hammered
    assert dead_ep.picks <= backend.fail_threshold + 6  # at most the rows in flight when it went down


def test_generate_inside_running_event_loop(servers: list[_Server]) -> None:
    srv = FakeLLM("openai")
    servers.append(srv)
    backend = ServerBackend([srv.url], timeout=5, **FAST)

    async def caller() -> list[str]:
        return [r.text for r in backend.generate(_chat(2), SamplingParams(max_new_tokens=8))]

    assert asyncio.run(caller()) == ["echo q0 seed 1000", "echo q1 seed 1001"]


# ---- transformers serve --------------------------------------------------------------------------

_SERVE = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tiny_models import make_tiny_llm
from transformers import AutoTokenizer
path = make_tiny_llm(Path({model!r}))
tok = AutoTokenizer.from_pretrained(path)
tok.chat_template = ("{{% for m in messages %}}{{{{ m['content'] }}}} {{% endfor %}}"
                     "{{% if add_generation_prompt %}}Answer : {{% endif %}}")
tok.save_pretrained(path)
from transformers.cli.serve import Serve
Serve(str(path), host="127.0.0.1", port={port}, device="cpu", log_level="warning")
"""


@pytest.fixture(scope="module")
def transformers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        pytest.skip("`transformers serve` needs transformers[serving] (fastapi, uvicorn, openai)")
    tmp = tmp_path_factory.mktemp("tf_serve")
    (tmp / "hub_cache").mkdir()  # its /v1/models scans the Hub cache: keep it empty and local
    model, port = str(tmp / "tiny_chat_llm"), _free_port()
    script = _SERVE.format(tests=str(Path(__file__).parent), model=model, port=port)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "hub_cache"),
           "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("transformers serve did not start:\n" + (tmp / "serve.log").read_text()[-3000:])
            time.sleep(0.3)
        yield url, model
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_transformers_serve_chat_and_completions(transformers_server: tuple[str, str],
                                                  servers: list[_Server]) -> None:
    url, model = transformers_server
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    reqs = [GenerationRequest(key=f"r{i}", seed=i, messages=[{"role": "user", "content": w}])
            for i, w in enumerate(["a red car", "the old dog", "blue sky", "a small boat", "green tree"])]
    direct = ServerBackend([url], model=model, max_in_flight=1, timeout=30, **FAST)
    expected = [r.text for r in direct.generate(reqs, greedy)]
    assert len(set(expected)) > 1 and all(expected)

    # Same rows through a proxy that fails the first three requests (the probes among them) with 503.
    proxy = FaultProxy(url, fail=(1, 2, 3))
    servers.append(proxy)
    backend = ServerBackend([proxy.url], model=model, max_in_flight=4, timeout=30, max_retries=5, **FAST)
    out = backend.generate(reqs, greedy)
    assert [r.text for r in out] == expected  # greedy: each row's text depends only on its prompt
    assert all(r.n_tokens == 8 and r.finish_reason == "length" for r in out)  # server usage; EOS is muted
    assert "n_tokens_estimated" not in out[0].extra and len(proxy.faults) == 3

    # Chat with a schema: `transformers serve` accepts response_format and ignores it (documented).
    assert backend.generate(_chat(1, SCHEMA), greedy)[0].text

    # Completion mode: /v1/completions; it rejects response_format (422), which is then dropped.
    comp = ServerBackend([url], model=model, chat=False, timeout=30, **FAST)
    prompts = [GenerationRequest(key="c0", seed=1, prompt="a red car", json_schema=SCHEMA),
               GenerationRequest(key="c1", seed=2, prompt="the old dog")]
    res = comp.generate(prompts, greedy)
    assert all(r.text and r.n_tokens == 8 for r in res)
    assert comp.endpoints[0].dropped == {"response_format"}
    info = comp.describe()
    assert info["model"] == model and info["servers"][0]["kind"] == "openai" and info["mode"] == "completion"


def test_build_through_transformers_serve(transformers_server: tuple[str, str], tmp_path: Path) -> None:
    """The whole Stage 1 with `--llm-endpoint`: the build talks to a real server, rows reconcile."""
    import json

    import pyarrow.parquet as pq
    from conftest import run_build
    from datasets import load_dataset

    url, model = transformers_server
    out = tmp_path / "served"
    r = run_build(["--recipe", "demo", "--out", str(out), "--limit", "6", "--llm", model, "--llm-endpoint", url,
                   "--prompt-mode", "chat", "--stages", "captions", "--set", "captions.min_words=3",
                   "--set", "captions.sampling.max_new_tokens=24", "--set", "captions.max_attempts=1",
                   "--set", "captions.min_seed_overlap=0"])  # a random tiny model cannot stay on topic
    rejected = pq.read_table(out / "artifacts" / "rejections.parquet").to_pylist()
    if len(rejected) == 6:  # every row rejected: a clear failure, not an unloadable dataset
        assert r.returncode == 4 and "every row was rejected" in r.stderr
    else:
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(load_dataset(str(out), "captions", split="train")) + len(rejected) == 6
    manifest = json.loads((out / "artifacts" / "build_manifest.json").read_text())
    assert manifest["llm"]["backend"] == "server" and manifest["llm"]["model"] == model
    assert url.split("//")[1] in json.dumps(manifest["llm"])  # endpoints recorded (without credentials)
