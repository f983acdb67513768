"""LLM backends behind one interface (`base.Backend`): chosen by the recipe's `llm` section."""

from __future__ import annotations

from typing import Any

from .base import Backend, GenerationRequest, GenerationResult, SamplingParams

__all__ = ["Backend", "GenerationRequest", "GenerationResult", "SamplingParams", "make_backend"]


def make_backend(llm: dict[str, Any], *, device: str = "cpu") -> Backend:
    """`llm.endpoints` set -> OpenAI-compatible/TGI servers; otherwise in-process transformers."""
    if llm.get("endpoints"):
        from .server_backend import ServerBackend

        endpoints = llm["endpoints"]
        return ServerBackend(
            endpoints if isinstance(endpoints, list) else str(endpoints).split(","),
            model=llm.get("model"),
            max_in_flight=int(llm.get("max_in_flight", 64)),
            timeout=float(llm.get("timeout", 300)),
            max_retries=int(llm.get("max_retries", 5)),
            chat=llm.get("prompt_mode", "chat") == "chat",
        )
    from .transformers_backend import TransformersBackend

    return TransformersBackend(
        llm.get("model", "gemma3-270m-gguf"), device=device, batch_size=int(llm.get("batch_size", 8)),
        batching=str(llm.get("batching", "static")),
    )
