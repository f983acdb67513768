"""Wire formats: what is sent to each kind of server and how its answer is read.

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

Every failure of a call is classified here: `Retryable` (transient: 5xx, 408/409/425/429, timeouts,
connection errors, a malformed body) or `Fatal` (the server refused this request as wrong).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import (
    HfHubHTTPError,
    InferenceTimeoutError,
    OfflineModeIsEnabled,
    OverloadedError,
)

from ..base import GenerationRequest, GenerationResult, SamplingParams
from .endpoints import Endpoint

T = TypeVar("T")

_RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx
_OVERLOAD_STATUS = {429, 503}  # the server says it is busy: fewer requests in flight
_OWNER_KIND = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp", "llama.cpp": "llamacpp"}
_TGI_INFO_KEYS = ("model_id", "model_sha", "model_dtype", "model_pipeline_tag", "version", "sha",
                  "max_total_tokens", "max_input_tokens", "max_concurrent_requests", "max_stop_sequences")
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
    except OfflineModeIsEnabled as e:  # only if huggingface_hub's own HTTP client got used
        raise Fatal("HF_HUB_OFFLINE blocks the request", str(e)) from e
    except (TimeoutError, InferenceTimeoutError, httpx2.TimeoutException) as e:
        raise Retryable(f"timeout ({type(e).__name__})", overload=True) from e
    except HfHubHTTPError as e:
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if status is None:
            raise Retryable(f"HTTP error ({type(e).__name__})") from e
        check_status(int(status), response)
        raise Retryable(f"HTTP {status}") from e
    except httpx2.TransportError as e:  # refused, reset, dropped mid-response
        raise Retryable(f"connection error ({type(e).__name__})") from e
    except OSError as e:
        raise Retryable(f"connection error ({type(e).__name__})") from e
    except Exception as e:
        cause = e.__cause__  # text_generation wraps HTTP errors in TextGenerationError subclasses
        if isinstance(cause, HfHubHTTPError) and getattr(cause, "response", None) is not None:
            check_status(int(cause.response.status_code), cause.response)
            raise Retryable(f"HTTP {cause.response.status_code}") from e
        if isinstance(e, OverloadedError):
            raise Retryable("overloaded", overload=True) from e
        if isinstance(e, ValueError):  # malformed or truncated response body (JSONDecodeError, no choices)
            raise Retryable(f"bad response ({type(e).__name__}: {str(e)[:200]})") from e
        raise



# ---- probing ---------------------------------------------------------------------------------------


async def probe(ep: Endpoint, http: httpx2.AsyncClient, *, timeout: float, server_kind: str | None) -> None:
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
               http: httpx2.AsyncClient, hf: AsyncInferenceClient) -> GenerationResult:
    """One HTTP call in the endpoint's dialect; every failure comes out as Retryable or Fatal."""
    if req.messages is not None:
        return await classified(_chat(ep, req, params, model, hf))
    if ep.kind == "tgi":
        return await classified(_tgi_generate(req, params, hf))
    return await classified(_completion(ep, req, params, model, http))


async def _chat(ep: Endpoint, req: GenerationRequest, params: SamplingParams, model: str | None,
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
        model=payload_model(ep, model),
        max_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p if 0.0 < params.top_p < 1.0 and "top_p" not in ep.dropped else None,
        seed=wire_seed(req.seed) if "seed" not in ep.dropped else None,
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


async def _tgi_generate(req: GenerationRequest, params: SamplingParams,
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
        seed=wire_seed(req.seed),
        stop=list(req.stop) or None,
        grammar={"type": "json", "value": req.json_schema} if req.json_schema is not None else None,  # type: ignore[arg-type]
    )
    if isinstance(out, str):  # huggingface_hub dropped `details` (it decided the server is not TGI)
        return _result(out, None, None, params)
    details = _field(out, "details")
    return _result(_field(out, "generated_text") or "", _field(details, "generated_tokens"),
                   _field(details, "finish_reason"), params)


async def _completion(ep: Endpoint, req: GenerationRequest, params: SamplingParams, model: str | None,
                      http: httpx2.AsyncClient) -> GenerationResult:
    body: dict[str, Any] = {
        "model": payload_model(ep, model),
        "prompt": req.prompt,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "seed": wire_seed(req.seed),
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
    check_status(r.status_code, r)
    data = r.json()
    choice = (data.get("choices") or [None])[0] if isinstance(data, dict) else None
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


def wire_seed(seed: int) -> int:
    """The seed as sent: llama.cpp reads it as uint32 (0xFFFFFFFF = random), TGI u64, vLLM int64: 31 bits fit all."""
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
