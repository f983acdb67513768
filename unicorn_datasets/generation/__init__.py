"""LLM backends behind one interface (`base.Backend`): chosen by the recipe's `llm` section."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn_datasets.generation.base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    resolve_prompt_mode,
)

if TYPE_CHECKING:
    from unicorn_datasets.recipe import LLMSection

__all__ = ["Backend", "GenerationRequest", "GenerationResult", "SamplingParams", "make_backend"]


def make_backend(llm: LLMSection, *, device: str = "cpu") -> Backend:
    """`llm.endpoints` set -> OpenAI-compatible/TGI servers; otherwise in-process transformers."""
    if llm.endpoints:
        from unicorn_datasets.generation.server import ServerBackend

        return ServerBackend(
            list(llm.endpoints),
            model=llm.model,
            max_in_flight=llm.max_in_flight or 64,
            timeout=llm.timeout,
            max_retries=llm.max_retries,
            chat=resolve_prompt_mode(llm.prompt_mode, supports_chat=True) == "chat",  # servers serve chat
        )
    from unicorn_datasets.generation.transformers_backend import TransformersBackend

    return TransformersBackend(llm.model, device=device, batch_size=llm.batch_size, batching=llm.batching)
