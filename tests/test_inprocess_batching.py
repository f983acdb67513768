"""`llm.batching`: transformers' continuous batching against the static batches, on the tiny random model."""

from __future__ import annotations

from pathlib import Path

import pytest

from unicorn_datasets.generation import make_backend
from unicorn_datasets.generation.base import GenerationRequest, SamplingParams
from unicorn_datasets.generation.transformers_backend import TransformersBackend
from unicorn_datasets.recipe import LLMSection, RecipeError, load_recipe

PROMPTS = [" ".join(["the red car near the old house"] * (1 + i % 4)) + f" {i}" for i in range(7)]


def requests(stop: tuple[str, ...] = ()) -> list[GenerationRequest]:
    return [GenerationRequest(key=f"r{i}", seed=100 + i, prompt=p, stop=stop) for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def backends(tiny_llm: Path) -> dict[str, TransformersBackend]:
    return {mode: TransformersBackend(str(tiny_llm), batch_size=3, batching=mode) for mode in ("static", "continuous")}


def test_greedy_continuous_rows_equal_each_prompt_generated_alone(backends: dict[str, TransformersBackend]) -> None:
    import torch
    from transformers import GenerationConfig

    b = backends["continuous"]
    params = SamplingParams(max_new_tokens=24, temperature=0.0)
    continuous = b.generate(requests(), params)
    gen = GenerationConfig(max_new_tokens=24, do_sample=False, eos_token_id=b.eos_ids, suppress_tokens=b.suppress_ids,
                           pad_token_id=b.tokenizer.pad_token_id)
    for prompt, got in zip(PROMPTS, continuous, strict=True):
        enc = b.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            alone = b.model.generate(**enc, generation_config=gen)[0, enc["input_ids"].shape[1]:].tolist()
        want = b._result(alone, [], params)
        assert (got.text, got.n_tokens, got.finish_reason) == (want.text, want.n_tokens, want.finish_reason)
        assert got.extra["prompt_tokens"] == enc["input_ids"].shape[1]  # for `unicorn plan`
    subset = b.generate(requests()[2:5], params)  # other neighbours in the running batch: same rows
    assert [r.text for r in subset] == [r.text for r in continuous[2:5]]
    assert {r.finish_reason for r in continuous} == {"length"} and all(r.n_tokens == 24 for r in continuous)


def test_continuous_batching_cuts_stop_strings_after_the_fact(backends: dict[str, TransformersBackend]) -> None:
    params = SamplingParams(max_new_tokens=24, temperature=0.0)
    full = backends["continuous"].generate(requests(), params)
    stop = full[0].text[6:8]  # random weights write byte salad: a stop string that surely occurs
    stopped = backends["continuous"].generate(requests(stop=(stop,)), params)
    cut = 0
    for f, s in zip(full, stopped, strict=True):
        assert s.text == f.text.split(stop)[0]
        if stop in f.text:
            cut += 1
            assert s.finish_reason == "stop"
    assert cut > 0


def test_sampled_continuous_rows_are_reproducible_for_the_same_call(backends: dict[str, TransformersBackend]) -> None:
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.95)
    first = backends["continuous"].generate(requests(), params)
    again = backends["continuous"].generate(requests(), params)
    assert [r.text for r in first] == [r.text for r in again]
    assert len({r.text for r in first}) > 1


def test_schema_and_penalty_calls_fall_back_to_static_and_bad_modes_are_refused(tiny_llm: Path,
                                                                     backends: dict[str, TransformersBackend]) -> None:
    backend = make_backend(LLMSection(model=str(tiny_llm), batching="continuous"))
    assert backend.describe()["batching"] == "continuous"
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 5}}, "required": ["a"],
              "additionalProperties": False}
    reqs = [GenerationRequest(key="s", seed=1, prompt=PROMPTS[0], json_schema=schema)]
    params = SamplingParams(max_new_tokens=30, temperature=0.0)
    assert backend.generate(reqs, params)[0].text == backends["static"].generate(reqs, params)[0].text
    penalised = SamplingParams(max_new_tokens=12, temperature=0.8, repetition_penalty=1.3)  # dropped by CB
    assert [r.text for r in backend.generate(requests(), penalised)] == \
        [r.text for r in backends["static"].generate(requests(), penalised)]
    with pytest.raises(RecipeError, match="llm.batching"):
        load_recipe("demo", {"llm.batching": "dynamic"})
