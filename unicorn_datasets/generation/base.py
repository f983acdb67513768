"""The one interface every LLM backend implements. Stages build requests; backends answer them.

Backends know nothing of stages: a request is a prompt (completion mode) or chat messages,
an optional JSON schema the output must satisfy, stop strings and a per-row seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

PromptMode = Literal["auto", "chat", "completion"]


def resolve_prompt_mode(mode: str, supports_chat: bool) -> Literal["chat", "completion"]:
    """The one meaning of `llm.prompt_mode`: "auto" is chat when the backend has a chat template, else completion."""
    if mode == "auto":
        return "chat" if supports_chat else "completion"
    if mode == "chat" and not supports_chat:
        raise ValueError("llm.prompt_mode is chat but the model has no chat template; use completion or auto")
    if mode not in ("chat", "completion"):
        raise ValueError(f"llm.prompt_mode must be auto, chat or completion, got {mode!r}")
    return mode  # type: ignore[return-value]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    repetition_penalty: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
        }


@dataclass
class GenerationRequest:
    key: str  # the row id; used in logs and errors
    seed: int  # per-row sampling seed, derived from (build seed, row id, attempt)
    prompt: str | None = None  # completion mode (base models)
    messages: list[dict[str, str]] | None = None  # chat mode (instruction-tuned models)
    json_schema: dict[str, Any] | None = None  # output must be JSON valid under this schema
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(f"request {self.key}: give exactly one of prompt / messages")


@dataclass
class GenerationResult:
    text: str
    n_tokens: int
    finish_reason: str = "stop"  # "stop" (EOS or stop string) | "length"
    extra: dict[str, Any] = field(default_factory=dict)


class RequestFailed(Exception):
    """This one request failed for good (retries exhausted, or refused as malformed): the row is rejected."""

    def __init__(self, error: str, reason: str = "server_error") -> None:
        super().__init__(error)
        self.error = " ".join(str(error).split())[:500]  # one line, for the rejection record
        self.reason = reason


class BackendUnavailable(RuntimeError):
    """The backend as a whole is down (every endpoint unreachable or persistently failing): stop the build."""


class FailureRun:
    """The one "backend is down" rule, for the engine and the server client: failures since the last success,
    and down once they fill a whole window of requests in flight (at least 20), none of which succeeded."""

    MIN_RUN = 20

    def __init__(self, window: int, threshold: int | None = None) -> None:
        self.threshold = threshold or max(self.MIN_RUN, window)
        self.count = 0

    def success(self) -> None:
        self.count = 0

    def failure(self) -> bool:
        """Count one failure; True when the run says the backend is down."""
        self.count += 1
        return self.down

    @property
    def down(self) -> bool:
        return self.count >= self.threshold


class Backend(Protocol):
    """An LLM that turns requests into results.

    `generate` answers a batch in order (the in-process backend batches on the GPU). Server backends
    also answer one request at a time with `agenerate_one`, awaited concurrently by the generation
    engine, which keeps `max_in_flight` of them open.
    """

    supports_chat: bool
    max_in_flight: int  # how many requests a caller should keep open at once

    def describe(self) -> dict[str, Any]:
        """Provenance: backend kind, model id, revision or file hash."""
        ...

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]: ...

    def check_available(self) -> None:
        """Raise BackendUnavailable (one line) if the backend cannot answer at all."""
        ...

    def close(self) -> None:
        """Release connections, threads and event loops; the backend is not used afterwards."""
        ...


@runtime_checkable
class AsyncBackend(Backend, Protocol):
    """A backend the engine can drive one request at a time (the server backend)."""

    async def agenerate_one(self, request: GenerationRequest, params: SamplingParams) -> GenerationResult:
        """One request, retried on transient errors. Raises RequestFailed or BackendUnavailable."""
        ...
