"""Backend for LLM servers: TGI, vLLM, SGLang, llama.cpp, `transformers serve`, Inference Endpoints.

Talks to them through `huggingface_hub.AsyncInferenceClient` (the `text-generation` client is legacy and
conflicts with datasets 5.x). Throughput comes from many requests in flight: the servers batch them.

What is sent where (checked against huggingface_hub 2.4 and the servers' request schemas):

- chat mode: `chat_completion` -> POST {base}/v1/chat/completions on every server.
- completion mode: TGI -> `text_generation(details=True)` -> POST {base}/ (TGI's native route, with
  `grammar`); any other server -> POST {base}/v1/completions (OpenAI legacy completions) on the same
  HTTP client, since `text_generation` only speaks TGI's protocol.
- `json_schema`:
    TGI chat:          {"type": "json_object", "value": schema}  (huggingface_hub rewrites the OpenAI
                       form into this for every URL endpoint; TGI >= 2 enforces it)
    TGI completion:    grammar={"type": "json", "value": schema}
    OpenAI-compatible: {"type": "json_schema", "json_schema": {"name", "schema", "strict"}} sent verbatim
                       (vLLM, SGLang, llama.cpp enforce it; `transformers serve` ignores it with a warning)
    completions:       vLLM `response_format`, SGLang `json_schema` (a string), llama.cpp `json_schema`;
                       `transformers serve` rejects the field (422), so it is dropped for that endpoint.
  Servers that ignore the schema return free text: callers must still validate the JSON.
- `transformers serve` pinned to a model (`transformers serve MODEL`) answers only requests naming that
  exact model, and its /v1/models lists the local Hub cache, not the pinned model: set `model` to it.

The server kind is probed once per endpoint (TGI answers GET /info with a `model_id`; OpenAI-compatible
servers answer GET /v1/models, whose `owned_by` names vLLM / SGLang / llama.cpp).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import (
    HfHubHTTPError,
    InferenceTimeoutError,
    OfflineModeIsEnabled,
    OverloadedError,
)

from .base import GenerationRequest, GenerationResult, SamplingParams

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx
_OWNER_KIND = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp", "llama.cpp": "llamacpp"}
_TGI_INFO_KEYS = ("model_id", "model_sha", "model_dtype", "model_pipeline_tag", "version", "sha",
                  "max_total_tokens", "max_input_tokens", "max_concurrent_requests", "max_stop_sequences")
_HF_HOSTS = (".huggingface.co", ".huggingface.cloud", ".hf.space")  # hosts that may get the saved HF token
# Strict servers (`transformers serve`) reject fields outside the OpenAI schema with this message.
_UNEXPECTED_FIELDS = re.compile(r"Unexpected fields in the request: \{([^}]*)\}")
_OPTIONAL_FIELDS = {"repetition_penalty", "response_format", "json_schema", "seed", "top_p"}


class _VerbatimResponseFormat(dict):
    """An OpenAI `response_format` that reaches the server unchanged.

    huggingface_hub (2.x) rewrites {"type": "json_schema", ...} into TGI's {"type": "json_object",
    "value": schema} for every URL endpoint; vLLM / SGLang / llama.cpp read that as schema-less JSON
    mode. The rewrite is keyed on `.get("type")`, so hiding `type` there skips it; the payload copy is
    built from `.items()` and still carries it. If huggingface_hub changes, this degrades to the rewrite.
    """

    def get(self, key: Any, default: Any = None) -> Any:
        return default if key == "type" else super().get(key, default)


class _Retryable(Exception):
    def __init__(self, status: str, retry_after: float | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after


class _Fatal(Exception):
    def __init__(self, status: str, message: str = "", dropped: set[str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.message = message
        self.dropped = dropped or set()


@dataclass
class _Endpoint:
    url: str  # base URL, credentials removed: the only form that is ever logged or described
    token: str | None  # None: no Authorization header is sent
    kind: str | None = None  # tgi | vllm | sglang | llamacpp | openai; None until probed
    info: dict[str, Any] = field(default_factory=dict)
    in_flight: int = 0
    picks: int = 0
    failures: int = 0  # consecutive
    down_until: float = 0.0
    served: int = 0
    dropped: set[str] = field(default_factory=set)  # fields this server rejected
    lock: asyncio.Lock | None = None


def _split_endpoint(raw: str) -> tuple[str, str | None]:
    """'https://user:tok@host:8000/v1/' -> ('https://host:8000', 'tok'). Routes are appended later."""
    raw = raw.strip()
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    token = parts.password or parts.username or None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    if parts.query:
        shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        logger.warning("endpoint %s: the query string is dropped", shown)
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return urlunsplit((parts.scheme, netloc, path.rstrip("/"), "", "")), token


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _retry_after(response: Any) -> float | None:
    try:
        return float(response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


def _server_message(response: Any) -> str:
    try:
        text = response.text
    except Exception:  # body not read (streamed) or undecodable
        return ""
    return " ".join(str(text).split())[:300]


def _check_status(status: int, response: Any) -> None:
    if status < 400:
        return
    if status in _RETRY_STATUS or status >= 500:
        raise _Retryable(f"HTTP {status}", _retry_after(response))
    message = _server_message(response)
    match = _UNEXPECTED_FIELDS.search(message)
    dropped = {f.strip().strip("'\"") for f in match.group(1).split(",")} if match else set()
    raise _Fatal(f"HTTP {status}", message, dropped & _OPTIONAL_FIELDS)


async def _classified(call: Awaitable[T]) -> T:
    """Runs one HTTP call; maps every failure to _Retryable (transient) or _Fatal (the request is wrong)."""
    try:
        return await call
    except (_Retryable, _Fatal):
        raise
    except OfflineModeIsEnabled as e:  # only if huggingface_hub's own HTTP client got used
        raise _Fatal("HF_HUB_OFFLINE blocks the request", str(e)) from e
    except (TimeoutError, InferenceTimeoutError, httpx2.TimeoutException) as e:
        raise _Retryable(f"timeout ({type(e).__name__})") from e
    except HfHubHTTPError as e:
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if status is None:
            raise _Retryable(f"HTTP error ({type(e).__name__})") from e
        _check_status(int(status), response)
        raise _Retryable(f"HTTP {status}") from e
    except httpx2.TransportError as e:  # refused, reset, dropped mid-response
        raise _Retryable(f"connection error ({type(e).__name__})") from e
    except OSError as e:
        raise _Retryable(f"connection error ({type(e).__name__})") from e
    except Exception as e:
        cause = e.__cause__  # text_generation wraps HTTP errors in TextGenerationError subclasses
        if isinstance(cause, HfHubHTTPError) and getattr(cause, "response", None) is not None:
            _check_status(int(cause.response.status_code), cause.response)
            raise _Retryable(f"HTTP {cause.response.status_code}") from e
        if isinstance(e, OverloadedError):
            raise _Retryable("overloaded") from e
        if isinstance(e, ValueError):  # malformed or truncated response body (JSONDecodeError, no choices)
            raise _Retryable(f"bad response ({type(e).__name__}: {str(e)[:200]})") from e
        raise


class _Session:
    """Per-event-loop HTTP state: clients are bound to the loop that made them."""

    def __init__(self, backend: ServerBackend) -> None:
        self.backend = backend
        self.http: dict[str, httpx2.AsyncClient] = {}
        self.hf: dict[str, AsyncInferenceClient] = {}

    async def __aenter__(self) -> _Session:
        b = self.backend
        timeout = httpx2.Timeout(b.timeout, connect=min(b.timeout, b.connect_timeout))
        limits = httpx2.Limits(max_connections=b.max_in_flight, max_keepalive_connections=b.max_in_flight)
        for ep in b.endpoints:
            ep.lock = asyncio.Lock()
            # Our own client, not huggingface_hub's: its hooks refuse every URL under HF_HUB_OFFLINE
            # (local servers included), its pool is smaller than max_in_flight, and the auth hook below
            # keeps the saved Hugging Face token away from non-Hugging Face servers.
            http = httpx2.AsyncClient(timeout=timeout, limits=limits, follow_redirects=True,
                                      event_hooks={"request": [self._auth_hook(ep.token)]})
            client = AsyncInferenceClient(base_url=ep.url, timeout=b.timeout)
            if hasattr(client, "_async_client"):
                client._async_client = http
            self.http[ep.url], self.hf[ep.url] = http, client
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.hf.values():
            await client.close()
        for http in self.http.values():
            await http.aclose()

    @staticmethod
    def _auth_hook(token: str | None) -> Callable[[httpx2.Request], Awaitable[None]]:
        async def hook(request: httpx2.Request) -> None:
            if token:
                request.headers["authorization"] = f"Bearer {token}"
            else:
                request.headers.pop("authorization", None)

        return hook


class ServerBackend:
    """Many requests in flight over one or more endpoints; results come back in input order."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        model: str | None = None,
        max_in_flight: int = 64,
        timeout: float = 300.0,
        max_retries: int = 5,
        chat: bool = True,
        token: str | None = None,
        server_kind: str | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        connect_timeout: float = 10.0,
        fail_threshold: int = 3,
        cooldown: float = 10.0,
    ) -> None:
        if not endpoints:
            raise ValueError("ServerBackend needs at least one endpoint URL")
        if timeout is None or timeout <= 0:
            raise ValueError("timeout must be positive seconds (the client default is to wait forever)")
        self.model = model
        self.max_in_flight = max(1, int(max_in_flight))
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_retries = max(0, int(max_retries))
        self.supports_chat = bool(chat)
        self.server_kind = server_kind
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.fail_threshold, self.cooldown = max(1, int(fail_threshold)), float(cooldown)
        self.endpoints: list[_Endpoint] = []
        for raw in endpoints:
            if not str(raw).strip():
                continue
            url, url_token = _split_endpoint(str(raw))
            auth = token or url_token
            host = urlsplit(url).hostname or ""
            if auth is None and (host == "huggingface.co" or host.endswith(_HF_HOSTS)):
                from huggingface_hub import get_token

                auth = get_token()  # Inference Endpoints need the user's token; other servers never see it
            self.endpoints.append(_Endpoint(url=url, token=auth))
        if not self.endpoints:
            raise ValueError("ServerBackend needs at least one endpoint URL")

    # ---- public API -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        if any(ep.kind is None for ep in self.endpoints):
            try:
                self._run(self._probe_all)
            except Exception as e:  # provenance is best-effort; generation reports real errors
                logger.warning("could not probe the servers: %s", type(e).__name__)
        reported = next((m for ep in self.endpoints for m in self._reported_models(ep)), None)
        return {
            "backend": "server",
            "model": self.model or reported,
            "mode": "chat" if self.supports_chat else "completion",
            "endpoints": [ep.url for ep in self.endpoints],
            "servers": [{"endpoint": ep.url, "kind": ep.kind, **ep.info} for ep in self.endpoints],
        }

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        if not requests:
            return []
        return self._run(lambda: self.agenerate(requests, params))

    async def agenerate(
        self, requests: list[GenerationRequest], params: SamplingParams
    ) -> list[GenerationResult]:
        async with _Session(self) as session:
            sem = asyncio.Semaphore(self.max_in_flight)

            async def one(req: GenerationRequest) -> GenerationResult:
                async with sem:
                    return await self._with_retries(req, params, session)

            tasks = [asyncio.create_task(one(r)) for r in requests]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                # One row failed for good: stop the others instead of letting them retry to exhaustion.
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    # ---- event loop -------------------------------------------------------------------------------

    @staticmethod
    def _run(make: Callable[[], Awaitable[T]]) -> T:
        async def main() -> T:
            return await make()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        # Called from inside a running loop (a notebook, an async stage): asyncio.run would refuse,
        # so run our own loop on a worker thread and block on it.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, main()).result()

    # ---- scheduling and retries -------------------------------------------------------------------

    def _pick(self, avoid: _Endpoint | None) -> _Endpoint:
        now = time.monotonic()
        live = [ep for ep in self.endpoints if ep.down_until <= now]
        if not live:  # all cooling down: try the one that recovers first rather than give up
            live = [min(self.endpoints, key=lambda ep: ep.down_until)]
        if avoid is not None and len(live) > 1 and avoid in live:
            live.remove(avoid)
        ep = min(live, key=lambda e: (e.in_flight, e.picks))  # least busy; ties go round-robin
        ep.picks += 1
        return ep

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        delay = random.uniform(delay / 2, delay)  # jitter: rows that failed together retry apart
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    def _mark_failed(self, ep: _Endpoint) -> None:
        ep.failures += 1
        if ep.failures >= self.fail_threshold:
            pause = min(self.cooldown * 2 ** (ep.failures - self.fail_threshold), 10 * self.cooldown)
            if ep.down_until <= time.monotonic():
                logger.warning("endpoint %s failed %d times in a row: skipped for %.1fs",
                               ep.url, ep.failures, pause)
            ep.down_until = time.monotonic() + pause

    async def _with_retries(
        self, req: GenerationRequest, params: SamplingParams, s: _Session
    ) -> GenerationResult:
        errors: list[str] = []
        avoid: _Endpoint | None = None
        attempt = 0
        while attempt <= self.max_retries:
            ep = self._pick(avoid)
            ep.in_flight += 1
            try:
                result = await self._call(ep, req, params, s)
            except _Fatal as e:
                if e.dropped - ep.dropped:  # a strict server refused an optional field: resend without it
                    logger.warning("endpoint %s rejects %s: not sent to it again", ep.url, sorted(e.dropped))
                    ep.dropped |= e.dropped
                    continue
                detail = f": {e.message}" if e.message else ""
                raise RuntimeError(f"row {req.key!r}: endpoint {ep.url} answered {e.status}{detail}") from e
            except _Retryable as e:
                self._mark_failed(ep)
                errors.append(f"{ep.url} -> {e.status}")
                avoid = ep
                attempt += 1
                if attempt <= self.max_retries:
                    await asyncio.sleep(self._delay(attempt - 1, e.retry_after))
                continue
            finally:
                ep.in_flight -= 1
            ep.failures, ep.down_until = 0, 0.0
            ep.served += 1
            result.extra.update(endpoint=ep.url, attempts=attempt + 1)
            return result
        raise RuntimeError(
            f"row {req.key!r}: all {self.max_retries + 1} attempts failed "
            f"(endpoints: {', '.join(sorted({ep.url for ep in self.endpoints}))}): " + "; ".join(errors)
        )

    # ---- probing ----------------------------------------------------------------------------------

    async def _probe_all(self) -> None:
        async with _Session(self) as s:
            for ep in self.endpoints:
                try:
                    await self._ensure_probed(ep, s)
                except (_Retryable, _Fatal) as e:
                    ep.info = {"error": e.status}

    async def _ensure_probed(self, ep: _Endpoint, s: _Session) -> None:
        if ep.kind is not None:
            return
        assert ep.lock is not None
        async with ep.lock:  # one probe per endpoint, not one per in-flight row
            if ep.kind is None:
                await _classified(self._probe(ep, s.http[ep.url]))

    async def _probe(self, ep: _Endpoint, http: httpx2.AsyncClient) -> None:
        timeout = min(self.timeout, 10.0)
        kind, info = "openai", {}
        r = await http.get(ep.url + "/info", timeout=timeout)
        if r.status_code >= 500:
            _check_status(r.status_code, r)
        data = _json_or_none(r) if r.status_code == 200 else None
        if isinstance(data, dict) and "model_id" in data:
            kind, info = "tgi", {k: data[k] for k in _TGI_INFO_KEYS if k in data}
        else:
            r = await http.get(ep.url + "/v1/models", timeout=timeout)
            data = _json_or_none(r) if r.status_code == 200 else None
            models = data.get("data") if isinstance(data, dict) else None
            if isinstance(models, list):
                entries = [m for m in models if isinstance(m, dict)]
                info["models"] = [str(m.get("id")) for m in entries][:8]
                owners = {str(m.get("owned_by", "")).lower() for m in entries}
                kind = next((_OWNER_KIND[o] for o in owners if o in _OWNER_KIND), "openai")
            else:
                info["models_status"] = r.status_code
        ep.info = info
        ep.kind = self.server_kind or kind

    @staticmethod
    def _reported_models(ep: _Endpoint) -> list[str]:
        if "model_id" in ep.info:
            return [str(ep.info["model_id"])]
        return list(ep.info.get("models", []))

    def _payload_model(self, ep: _Endpoint) -> str | None:
        listed = self._reported_models(ep)
        if self.model and (not listed or self.model in listed):
            return self.model
        if len(listed) == 1:  # e.g. vLLM --served-model-name differs from the recipe's model id
            return listed[0]
        return self.model or (listed[0] if listed else None)

    # ---- one request ------------------------------------------------------------------------------

    async def _call(
        self, ep: _Endpoint, req: GenerationRequest, params: SamplingParams, s: _Session
    ) -> GenerationResult:
        await self._ensure_probed(ep, s)
        if req.messages is not None:
            return await _classified(self._chat(ep, req, params, s.hf[ep.url]))
        if ep.kind == "tgi":
            return await _classified(self._tgi_generate(ep, req, params, s.hf[ep.url]))
        return await _classified(self._completion(ep, req, params, s.http[ep.url]))

    async def _chat(self, ep: _Endpoint, req: GenerationRequest, params: SamplingParams,
                    client: AsyncInferenceClient) -> GenerationResult:
        kwargs: dict[str, Any] = {}
        extra_body: dict[str, Any] = {}
        if req.json_schema is not None and "response_format" not in ep.dropped:
            spec = {"name": "output", "schema": req.json_schema, "strict": True}
            rf = {"type": "json_schema", "json_schema": spec}
            kwargs["response_format"] = rf if ep.kind == "tgi" else _VerbatimResponseFormat(rf)
        if params.repetition_penalty != 1.0 and ep.kind in ("vllm", "sglang", "llamacpp"):
            # Not an OpenAI field: TGI's chat route and `transformers serve` reject or ignore it.
            extra_body[_penalty_name(ep.kind)] = params.repetition_penalty
        out = await client.chat_completion(
            req.messages,  # type: ignore[arg-type]
            model=self._payload_model(ep),
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p if 0.0 < params.top_p < 1.0 and "top_p" not in ep.dropped else None,
            seed=_seed(req.seed) if "seed" not in ep.dropped else None,
            stop=list(req.stop) or None,
            extra_body=extra_body or None,
            **kwargs,
        )
        choices = _field(out, "choices") or []
        if not choices:
            raise ValueError("response has no choices")
        text = _field(_field(choices[0], "message"), "content") or ""
        used = _field(_field(out, "usage"), "completion_tokens")
        return _result(text, used, _field(choices[0], "finish_reason"), params)

    async def _tgi_generate(self, ep: _Endpoint, req: GenerationRequest, params: SamplingParams,
                            client: AsyncInferenceClient) -> GenerationResult:
        sample = params.temperature > 0  # TGI rejects temperature=0: greedy is do_sample=False
        assert req.prompt is not None
        out = await client.text_generation(
            req.prompt,
            details=True,
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample and 0.0 < params.top_p < 1.0 else None,  # TGI wants 0 < top_p < 1
            repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1.0 else None,
            seed=_seed(req.seed),
            stop=list(req.stop) or None,
            grammar={"type": "json", "value": req.json_schema} if req.json_schema is not None else None,  # type: ignore[arg-type]
        )
        if isinstance(out, str):  # huggingface_hub dropped `details` (it decided the server is not TGI)
            return _result(out, None, None, params)
        details = _field(out, "details")
        return _result(_field(out, "generated_text") or "", _field(details, "generated_tokens"),
                       _field(details, "finish_reason"), params)

    async def _completion(self, ep: _Endpoint, req: GenerationRequest, params: SamplingParams,
                          http: httpx2.AsyncClient) -> GenerationResult:
        body: dict[str, Any] = {
            "model": self._payload_model(ep),
            "prompt": req.prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "seed": _seed(req.seed),
        }
        if 0.0 < params.top_p < 1.0:
            body["top_p"] = params.top_p
        if req.stop:
            body["stop"] = list(req.stop)
        if params.repetition_penalty != 1.0 and ep.kind in ("vllm", "sglang", "llamacpp"):
            body[_penalty_name(ep.kind)] = params.repetition_penalty
        if req.json_schema is not None:
            if ep.kind == "sglang":
                body["json_schema"] = json.dumps(req.json_schema)
            elif ep.kind == "llamacpp":
                body["json_schema"] = req.json_schema
            else:  # vLLM and unknown OpenAI-compatible servers; strict ones refuse it once, then never see it
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "output", "schema": req.json_schema}}
        for name in ep.dropped:
            body.pop(name, None)
        body = {k: v for k, v in body.items() if v is not None}
        r = await http.post(ep.url + "/v1/completions", json=body)
        _check_status(r.status_code, r)
        data = r.json()
        choice = (data.get("choices") or [None])[0]
        if not isinstance(choice, dict):
            raise ValueError("response has no choices")
        used = _field(data.get("usage"), "completion_tokens")
        return _result(choice.get("text") or "", used, choice.get("finish_reason"), params)


def _json_or_none(r: httpx2.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def _penalty_name(kind: str | None) -> str:
    return "repeat_penalty" if kind == "llamacpp" else "repetition_penalty"


def _seed(seed: int) -> int:
    # llama.cpp reads the seed as uint32 (and 0xFFFFFFFF means random); TGI u64, vLLM int64: 31 bits fit all.
    return int(seed) % (2**31 - 1)


def _result(text: str, used: Any, raw_finish: Any, params: SamplingParams) -> GenerationResult:
    extra: dict[str, Any] = {"finish_reason_raw": raw_finish}
    if isinstance(used, int) and used >= 0:
        n_tokens = used
    else:
        n_tokens = len(text.split())
        extra["n_tokens_estimated"] = True
    if raw_finish is None:  # some servers omit it: a full budget of real tokens means truncation
        full = "n_tokens_estimated" not in extra and n_tokens >= params.max_new_tokens
        finish = "length" if full else "stop"
    else:
        finish = "length" if str(raw_finish) == "length" else "stop"  # eos_token / stop_sequence / stop
    return GenerationResult(text=text, n_tokens=n_tokens, finish_reason=finish, extra=extra)
