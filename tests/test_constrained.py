"""JSON-schema constrained decoding on a tiny random-weight Llama with a small BPE tokenizer built here.

Random weights make the model's own choices arbitrary, so any valid output comes from the grammar.
Runs offline in a few seconds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from tiny_models import byte_bpe_tokenizer, tiny_llama
from transformers import (
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)

from unicorn_datasets.generation import constrained
from unicorn_datasets.generation.constrained import JsonSchemaLogitsProcessor, close_objects, make_processor
from unicorn_datasets.generation.sampling import PerRowSampler

WORDS = (
    "the a an of to in is on with for and cat dog red blue green car tree house man woman boat dock "
    "question answer options label image caption what where who how many color sky road lake "
    "A B C D yes no true false null 0 1 2 3 4 5 6 7 8 9 10 42"
).split()
EXTRA_VOCAB = 7  # logits wider than the tokenizer, as with padded embedding matrices

QA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "minItems": 2,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "question": {"type": "string", "maxLength": 8},
                    "answer": {"type": "string", "maxLength": 8},
                },
                "required": ["question", "answer"],
            },
        },
        "label": {"enum": ["A", "B", "C", "D"]},
    },
    "required": ["pairs", "label"],
}
SHORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["yes", "no"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["verdict", "count"],
}
PROMPTS = [
    "Caption: a red car on the road. JSON:",
    "a cat",
    "Caption: two dogs by the lake and a boat. JSON:",
]


def check_qa(obj: Any) -> None:
    assert isinstance(obj, dict) and list(obj) == ["pairs", "label"]
    assert obj["label"] in {"A", "B", "C", "D"}
    assert isinstance(obj["pairs"], list) and 2 <= len(obj["pairs"]) <= 3
    for pair in obj["pairs"]:
        assert isinstance(pair, dict) and list(pair) == ["question", "answer"]
        assert all(isinstance(v, str) and len(v) <= 8 for v in pair.values())


def check_short(obj: Any) -> None:
    assert isinstance(obj, dict) and list(obj) == ["verdict", "count"]
    assert obj["verdict"] in {"yes", "no"}
    assert isinstance(obj["count"], int) and 0 <= obj["count"] <= 9


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A model this small gains nothing from threads, and on a busy machine OpenMP spin-waits
    # make 2-thread generation 10-20x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    corpus += [json.dumps({"pairs": [{"question": "what color", "answer": "red"}], "label": "A"})] * 5
    return byte_bpe_tokenizer(corpus, 420, ["<pad>", "<eos>", "<bos>"])


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return tiny_llama(tokenizer, extra_vocab=EXTRA_VOCAB)


def RowSampler(seeds: list[int]) -> PerRowSampler:  # noqa: N802 - the backend's own sampler, hot enough to explore
    return PerRowSampler(seeds, temperature=1.5, top_p=1.0, suppress_ids=[])


def generate(model, tokenizer, processors: list[LogitsProcessor], max_new_tokens: int = 300) -> torch.Tensor:
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert (enc["attention_mask"][:, 0] == 0).any()  # the batch really is left-padded
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList(processors),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return out[:, enc["input_ids"].shape[1] :]


def row_text(tokenizer, row: torch.Tensor) -> tuple[str, bool]:
    """Decoded text up to EOS, and whether EOS was reached."""
    ids = row.tolist()
    if tokenizer.eos_token_id in ids:
        return tokenizer.decode(ids[: ids.index(tokenizer.eos_token_id)]), True
    return tokenizer.decode(ids), False


def vocab(model) -> int:
    return model.config.vocab_size


def test_mixed_batch_greedy(model, tokenizer) -> None:
    schemas = [QA_SCHEMA, None, SHORT_SCHEMA]
    proc = make_processor(tokenizer, vocab(model), schemas)
    assert proc is not None
    new = generate(model, tokenizer, [proc])

    qa, eos = row_text(tokenizer, new[0])
    assert eos, qa  # the grammar forced EOS once the document was complete
    check_qa(json.loads(qa))
    short, eos = row_text(tokenizer, new[2])
    assert eos, short
    check_short(json.loads(short))
    # the short row finished long before the others: generate padded it, the processor let it be
    ids = new[2].tolist()
    assert set(ids[ids.index(tokenizer.eos_token_id) + 1 :]) <= {tokenizer.pad_token_id}
    assert proc.violations == {} and proc.active == [False, False, False]

    # the unconstrained row is exactly what the model writes without any processor
    free = generate(model, tokenizer, [])
    n = min(new.shape[1], free.shape[1])
    assert torch.equal(new[1, :n], free[1, :n])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_batch_sampled(model, tokenizer, seed: int) -> None:
    """With a sampler after the constraint (the backend's order), every constrained row is valid."""
    proc = make_processor(tokenizer, vocab(model), [SHORT_SCHEMA, None, QA_SCHEMA])
    assert proc is not None
    new = generate(model, tokenizer, [proc, RowSampler([seed, seed + 10, seed + 20])])
    for row, check in ((0, check_short), (2, check_qa)):
        text, eos = row_text(tokenizer, new[row])
        assert eos, text
        check(json.loads(text))
    assert proc.violations == {}


def test_no_schema_no_processor(tokenizer) -> None:
    assert make_processor(tokenizer, len(tokenizer), [None, None]) is None


def test_grammars_and_tokenizer_compiled_once(tokenizer, monkeypatch) -> None:
    calls: list[Any] = []
    real = constrained.llguidance.LLMatcher.grammar_from_json_schema

    def counting(*args: Any, **kwargs: Any) -> str:
        calls.append(args)
        return real(*args, **kwargs)

    schema = {"type": "object", "properties": {"only": {"enum": ["x", "y", "z"]}}, "required": ["only"]}
    monkeypatch.setattr(constrained.llguidance.LLMatcher, "grammar_from_json_schema", counting)
    for _ in range(3):
        make_processor(tokenizer, len(tokenizer) + EXTRA_VOCAB, [schema, dict(schema), None])
    assert len(calls) == 1
    # one llguidance tokenizer per (tokenizer, vocab size, EOS ids)
    assert len(constrained._tokenizers[tokenizer]) == 1


def _allowed(scores: torch.Tensor, row: int) -> set[int]:
    return set(torch.isfinite(scores[row]).nonzero().flatten().tolist())


def test_eos_forced_and_finished_rows_left_alone(tokenizer) -> None:
    """Drive the processor by hand: a complete document allows only EOS; rows that ended are untouched."""
    schema = {"type": "object", "properties": {"v": {"enum": ["yes", "no"]}}, "required": ["v"]}
    width = len(tokenizer) + EXTRA_VOCAB
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    proc = JsonSchemaLogitsProcessor(tokenizer, width, [schema, schema, None])
    doc = tokenizer('{"v": "no"}')["input_ids"]
    prompt = torch.tensor([[pad, 5, 6], [7, 8, 9], [pad, pad, 9]])

    scores = proc(prompt, torch.zeros(3, width))
    first = _allowed(scores, 0)
    assert doc[0] in first and eos not in first and all(t < len(tokenizer) for t in first)
    assert _allowed(scores, 1) == first and len(_allowed(scores, 2)) == width

    # row 0 writes the whole document; row 1 is cut by a stop string after one token (then pads)
    ids = prompt
    for step, token in enumerate(doc):
        other = doc[0] if step == 0 else pad
        ids = torch.cat([ids, torch.tensor([[token], [other], [token]])], dim=1)
        scores = proc(ids, torch.zeros(3, width))
    assert _allowed(scores, 0) == {eos}  # complete: only EOS
    assert len(_allowed(scores, 1)) == width  # finished outside the grammar: left alone
    assert proc.active == [True, False, False] and proc.violations == {}

    ids = torch.cat([ids, torch.tensor([[eos], [pad], [eos]])], dim=1)
    scores = proc(ids, torch.zeros(3, width))
    assert proc.active == [False, False, False]
    ids = torch.cat([ids, torch.tensor([[pad], [pad], [pad]])], dim=1)
    assert len(_allowed(proc(ids, torch.zeros(3, width)), 0)) == width  # after EOS: pads, no crash

    with pytest.raises(RuntimeError):
        proc(prompt, torch.zeros(3, width))  # reused for another generate call


def test_rejected_token_recorded_not_raised(tokenizer) -> None:
    schema = {"type": "object", "properties": {"v": {"enum": ["yes", "no"]}}, "required": ["v"]}
    proc = JsonSchemaLogitsProcessor(tokenizer, len(tokenizer), [schema])
    bad = tokenizer("cat")["input_ids"][0]
    proc(torch.tensor([[5]]), torch.zeros(1, len(tokenizer)))
    scores = proc(torch.tensor([[5, bad]]), torch.zeros(1, len(tokenizer)))
    assert proc.violations == {0: bad} and proc.active == [False]
    assert len(_allowed(scores, 0)) == len(tokenizer)


def test_invalid_schema_raises(tokenizer) -> None:
    with pytest.raises(ValueError, match="unsupported JSON schema"):
        make_processor(tokenizer, len(tokenizer), [{"type": "no-such-type"}])


def test_close_objects() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"x": {"type": "string"}}},
            "list": {"type": "array", "items": {"type": "object", "properties": {"y": {"type": "integer"}}}},
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
        },
        "$defs": {"d": {"anyOf": [{"properties": {"z": {}}}, {"type": "string"}]}},
    }
    closed = close_objects(schema)
    assert closed["additionalProperties"] is False
    props = closed["properties"]
    assert props["properties"]["additionalProperties"] is False
    assert "additionalProperties" not in props["properties"]["properties"]  # a name map, not a schema
    assert props["list"]["items"]["additionalProperties"] is False
    assert props["open"]["additionalProperties"] is True
    assert closed["$defs"]["d"]["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the input is not modified
