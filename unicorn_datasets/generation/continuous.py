"""transformers' own continuous batching (`model.generate_batch`, paged KV cache) for the in-process backend.

Rows join and leave the running batch one by one instead of waiting for the longest row of a static batch.
What it cannot do (transformers 5.x), and why the static path stays the default:

- per-row seeds: it samples every row with one global `torch.multinomial` stream, so a sampled row depends
  on which rows ran beside it; rows are reproducible only for greedy decoding (temperature 0) or for the
  identical set of requests (the stream is seeded from all of the call's row seeds);
- stop strings: a row runs until EOS or `max_new_tokens`; stop strings are cut afterwards (same text,
  wasted tokens);
- JSON-schema constrained decoding and the repetition penalty (transformers drops its processor under
  continuous batching): such calls go to the static path (`continuous_supports`).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from unicorn_datasets.generation.base import GenerationRequest, SamplingParams

PAGE_SIZE = 64  # tokens per KV page: small pages waste little on short captions


def continuous_supports(requests: list[GenerationRequest], params: SamplingParams) -> bool:
    """Whether continuous batching can run this call as asked (otherwise the static path does)."""
    return params.repetition_penalty == 1.0 and all(r.json_schema is None for r in requests)


def generate_continuous(
    model: Any,
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    eos_ids: list[int],
    pad_id: int | None,
    suppress_ids: list[int],
    seeds: list[int],
    max_batch_tokens: int = 1024,
) -> list[list[int]]:
    """Generated token ids per prompt, in input order (EOS included when the row stopped on it)."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    sample = params.temperature > 0
    gen = GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=sample,
        temperature=params.temperature if sample else None,
        top_p=params.top_p if sample and params.top_p < 1.0 else None,
        top_k=None,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        suppress_tokens=suppress_ids or None,
    )
    # The cache is sized for this call's rows (auto-sizing reads GPU memory and is slow or wrong on CPU).
    pages = sum(math.ceil((len(p) + params.max_new_tokens) / PAGE_SIZE) for p in prompts) + len(prompts)
    cfg = ContinuousBatchingConfig(page_size=PAGE_SIZE, num_blocks=pages, max_batch_tokens=max_batch_tokens,
                                   seed=_call_seed(seeds), auto_switch_to_flash=False)
    out = model.generate_batch(prompts, generation_config=gen, continuous_batching_config=cfg, warmup=False,
                               progress_bar=False)
    results = list(out.values())
    failed = [r for r in results if r.error is not None]
    if len(results) != len(prompts) or failed:
        detail = failed[0].error if failed else f"{len(prompts) - len(results)} request(s) got no result"
        raise RuntimeError(f"continuous batching failed: {detail}")
    return [list(r.generated_tokens) for r in results]


def _call_seed(seeds: list[int]) -> int:
    digest = hashlib.sha256(",".join(map(str, seeds)).encode()).digest()
    return int.from_bytes(digest[:4], "big")
