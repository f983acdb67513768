"""Wire formats: what is sent to each kind of server and how its answer is read.

Plain JSON over a pooled aiohttp client per endpoint (huggingface_hub's `AsyncInferenceClient` builds
the same bodies, checked against 2.4, but costs a third more CPU per request and rewrites the OpenAI
`response_format` into TGI's form for every URL endpoint). What is sent where:

- chat mode: POST {base}/v1/chat/completions on every server.
- completion mode: TGI -> POST {base}/ (TGI's native route, `details: true`, with `grammar`); any other
  server -> POST {base}/v1/completions (OpenAI legacy completions).
- `json_schema`:
    TGI chat:          {"type": "json_object", "value": schema}  (TGI >= 2 enforces it)
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

Every failure of a call is classified here: `Retryable` (transient: 5xx, 408/409/425/429, timeouts,
connection errors, a malformed body) or `Fatal` (the server refused this request as wrong).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp

from unicorn_datasets.generation.base import GenerationRequest, GenerationResult, SamplingParams
from unicorn_datasets.generation.server.endpoints import Endpoint
from unicorn_datasets.generation.server.http_pool import PooledClient, Response

T = TypeVar("T")

_RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx
_OVERLOAD_STATUS = {429, 503}  # the server says it is busy: fewer requests in flight
_OWNER_KIND = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp", "llama.cpp": "llamacpp"}
_TGI_INFO_KEYS = ("model_id", "model_sha", "model_dtype", "model_pipeline_tag", "version", "sha",
                  "max_total_tokens", "max_input_tokens", "max_concurrent_requests", "max_stop_sequences")
# Strict servers (`transformers serve`) reject fields outside the OpenAI schema with this message.
_UNEXPECTED_FIELDS = re.compile(r"Unexpected fields in the request: \{([^}]*)\}")
_OPTIONAL_FIELDS = {"repetition_penalty", "response_format", "json_schema", "seed", "top_p"}


class Retryable(Exception):
    """A transient failure: the same request may succeed later. `overload`: the server asked for less."""

    def __init__(self, status: str, retry_after: float | None = None, *, overload: bool = False) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after
        self.overload = overload


class Fatal(Exception):
    """The server refused this request as wrong; `dropped`: optional fields it named as unexpected."""

    def __init__(self, status: str, message: str = "", dropped: set[str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.message = message
        self.dropped = dropped or set()


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


def check_status(status: int, response: Any) -> None:
    if status < 400:
        return
    if status in _RETRY_STATUS or status >= 500:
        raise Retryable(f"HTTP {status}", _retry_after(response), overload=status in _OVERLOAD_STATUS)
    message = _server_message(response)
    match = _UNEXPECTED_FIELDS.search(message)
    dropped = {f.strip().strip("'\"") for f in match.group(1).split(",")} if match else set()
    raise Fatal(f"HTTP {status}", message, dropped & _OPTIONAL_FIELDS)


async def classified(call: Awaitable[T]) -> T:
    """Runs one HTTP call; maps every failure to Retryable (transient) or Fatal (the request is wrong)."""
    try:
        return await call
    except (Retryable, Fatal):
        raise
    except TimeoutError as e:  # aiohttp's timeouts are TimeoutErrors too
        raise Retryable(f"timeout ({type(e).__name__})", overload=True) from e
    except (aiohttp.ClientError, OSError) as e:  # refused, reset, dropped mid-response
        raise Retryable(f"connection error ({type(e).__name__})") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # malformed or truncated body, no choices
        raise Retryable(f"bad response ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e


# ---- probing ---------------------------------------------------------------------------------------


async def probe(ep: Endpoint, http: PooledClient, *, timeout: float, server_kind: str | None) -> None:
    """Sets `ep.kind` and `ep.info` from GET /info (TGI) or GET /v1/models (OpenAI-compatible)."""
    kind, info = "openai", {}
    r = await http.get(ep.url + "/info", timeout=timeout)
    if r.status_code >= 500:
        check_status(r.status_code, r)
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
    ep.kind = server_kind or kind


def reported_models(ep: Endpoint) -> list[str]:
    if "model_id" in ep.info:
        return [str(ep.info["model_id"])]
    return list(ep.info.get("models", []))


def payload_model(ep: Endpoint, model: str | None) -> str | None:
    listed = reported_models(ep)
    if model and (not listed or model in listed):
        return model
    if len(listed) == 1:  # e.g. vLLM --served-model-name differs from the recipe's model id
        return listed[0]
    return model or (listed[0] if listed else None)


# ---- one request -----------------------------------------------------------------------------------


async def send(ep: Endpoint, req: GenerationRequest, params: SamplingParams, *, model: str | None,
               http: PooledClient) -> GenerationResult:
    """One HTTP call in the endpoint's dialect; every failure comes out as Retryable or Fatal."""
    if req.messages is not None:
        return await classified(_chat(ep, req, params, model, http))
    if ep.kind == "tgi":
        return await classified(_tgi_generate(ep, req, params, http))
    return await classified(_completion(ep, req, params, model, http))


async def _post(http: PooledClient, url: str, body: dict[str, Any]) -> Any:
    r = await http.post(url, json={k: v for k, v in body.items() if v is not None})
    check_status(r.status_code, r)
    return r.json()


def _openai_body(ep: Endpoint, req: GenerationRequest, params: SamplingParams, model: str | None,
                 **content: Any) -> dict[str, Any]:
    """The OpenAI fields both routes share (`content`: messages or prompt); unset ones left out."""
    body: dict[str, Any] = {
        "model": payload_model(ep, model),
        **content,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p if 0.0 < params.top_p < 1.0 else None,
        "seed": wire_seed(req.seed),
        "stop": list(req.stop) or None,
    }
    if params.repetition_penalty != 1.0 and ep.kind in ("vllm", "sglang", "llamacpp"):
        # Not an OpenAI field: TGI's chat route and `transformers serve` reject or ignore it.
        body[_penalty_name(ep.kind)] = params.repetition_penalty
    return body


async def _choice(ep: Endpoint, route: str, body: dict[str, Any], http: PooledClient) -> tuple[dict, Any]:
    """POST without the fields this server refused before; (the first choice, the usage object)."""
    for name in ep.dropped:
        body.pop(name, None)
    data = await _post(http, ep.url + route, body)
    choice = (data.get("choices") or [None])[0]
    if not isinstance(choice, dict):
        raise ValueError("response has no choices")
    return choice, data.get("usage")


async def _chat(ep: Endpoint, req: GenerationRequest, params: SamplingParams, model: str | None,
                http: PooledClient) -> GenerationResult:
    body = _openai_body(ep, req, params, model, messages=req.messages)
    if req.json_schema is not None:
        body["response_format"] = ({"type": "json_object", "value": req.json_schema} if ep.kind == "tgi" else
                                   {"type": "json_schema",
                                    "json_schema": {"name": "output", "schema": req.json_schema, "strict": True}})
    choice, usage = await _choice(ep, "/v1/chat/completions", body, http)
    return _result(_field(choice.get("message"), "content") or "", _field(usage, "completion_tokens"),
                   choice.get("finish_reason"), params, _field(usage, "prompt_tokens"))


async def _tgi_generate(ep: Endpoint, req: GenerationRequest, params: SamplingParams,
                        http: PooledClient) -> GenerationResult:
    sample = params.temperature > 0  # TGI rejects temperature=0: greedy is do_sample=False
    parameters = {
        "details": True,
        "max_new_tokens": params.max_new_tokens,
        "do_sample": sample,
        "temperature": params.temperature if sample else None,
        "top_p": params.top_p if sample and 0.0 < params.top_p < 1.0 else None,  # TGI wants 0 < top_p < 1
        "repetition_penalty": params.repetition_penalty if params.repetition_penalty != 1.0 else None,
        "seed": wire_seed(req.seed),
        "stop": list(req.stop) or None,
        "grammar": {"type": "json", "value": req.json_schema} if req.json_schema is not None else None,
    }
    data = await _post(http, ep.url + "/", {
        "inputs": req.prompt, "parameters": {k: v for k, v in parameters.items() if v is not None}})
    out = data[0] if isinstance(data, list) else data  # TGI answers a list of one
    details = out.get("details")
    return _result(out.get("generated_text") or "", _field(details, "generated_tokens"),
                   _field(details, "finish_reason"), params)


async def _completion(ep: Endpoint, req: GenerationRequest, params: SamplingParams, model: str | None,
                      http: PooledClient) -> GenerationResult:
    body = _openai_body(ep, req, params, model, prompt=req.prompt)
    if req.json_schema is not None:
        if ep.kind == "sglang":
            body["json_schema"] = json.dumps(req.json_schema)
        elif ep.kind == "llamacpp":
            body["json_schema"] = req.json_schema
        else:  # vLLM and unknown OpenAI-compatible servers; strict ones refuse it once, then never see it
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": req.json_schema}}
    choice, usage = await _choice(ep, "/v1/completions", body, http)
    return _result(choice.get("text") or "", _field(usage, "completion_tokens"), choice.get("finish_reason"), params,
                   _field(usage, "prompt_tokens"))


def _json_or_none(r: Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def _penalty_name(kind: str | None) -> str:
    return "repeat_penalty" if kind == "llamacpp" else "repetition_penalty"


def wire_seed(seed: int) -> int:
    """The seed as sent: llama.cpp reads it as uint32 (0xFFFFFFFF = random), TGI u64, vLLM int64: 31 bits fit all."""
    return int(seed) % (2**31 - 1)


def _result(text: str, used: Any, raw_finish: Any, params: SamplingParams,
            prompt_tokens: Any = None) -> GenerationResult:
    extra: dict[str, Any] = {"finish_reason_raw": raw_finish}
    if isinstance(prompt_tokens, int) and prompt_tokens >= 0:  # usage.prompt_tokens, for `unicorn plan`
        extra["prompt_tokens"] = prompt_tokens
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
