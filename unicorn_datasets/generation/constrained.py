"""JSON-schema constrained decoding for `model.generate`, one schema (or none) per batch row.

Built on llguidance (see bench/constrained_choice.md for why not xgrammar / outlines): a schema
compiles in about a millisecond and the per-step mask costs tens of microseconds per row, so the
cost that matters is applying a vocabulary-wide mask to the logits.

Use one processor per `generate` call and put it FIRST in the LogitsProcessorList: it only sets
disallowed tokens to -inf, and whatever samples afterwards must pick one of the remaining tokens.
Rows whose grammar is complete are left with only the EOS tokens, so they stop on their own.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llguidance
import llguidance.hf
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Schema = dict[str, Any]

# Same layout as `json.dumps(obj, ensure_ascii=False)`, which is how the few-shot prompts show JSON;
# fixed whitespace also stops a base model from padding objects with endless newlines.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
GRAMMAR_CACHE_SIZE = 256  # compiled schemas kept per tokenizer (a build uses a handful)


@dataclass
class _TokenizerEntry:
    """An llguidance view of one HF tokenizer (slow to build: seconds for a 262k vocabulary)."""

    lltok: llguidance.LLTokenizer
    grammars: OrderedDict[str, llguidance.LLMatcher] = field(default_factory=OrderedDict)


_lock = threading.Lock()
# Keyed weakly by the tokenizer object, then by (vocab size, EOS ids): dropping a model frees its entry.
_tokenizers: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[int, ...]], _TokenizerEntry]] = (
    weakref.WeakKeyDictionary()
)
_executor: llguidance.LLExecutor | None = None


def _get_executor() -> llguidance.LLExecutor:
    global _executor
    if _executor is None:
        _executor = llguidance.LLExecutor(num_threads=max(1, min(8, (os.cpu_count() or 2) // 2)))
    return _executor


def _tokenizer_entry(
    tokenizer: PreTrainedTokenizerBase, n_vocab: int, eos_ids: tuple[int, ...]
) -> _TokenizerEntry:
    with _lock:
        per_tok = _tokenizers.setdefault(tokenizer, {})
        entry = per_tok.get((n_vocab, eos_ids))
        if entry is None:
            lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=list(eos_ids))
            entry = per_tok[(n_vocab, eos_ids)] = _TokenizerEntry(lltok)
        return entry


def close_objects(schema: Any) -> Any:
    """Copy of `schema` where every object with `properties` and no say on extra keys forbids them.

    JSON Schema allows unlisted keys by default and llguidance follows the spec; a small model
    given that freedom invents keys, so `strict=True` closes objects (what xgrammar and OpenAI's
    strict mode do). Schemas that set additionalProperties themselves are left as they are.
    """
    schema = copy.deepcopy(schema)
    _close(schema)
    return schema


_OPEN_KEYS = ("additionalProperties", "unevaluatedProperties", "patternProperties")
_SUB_SCHEMA = ("items", "additionalItems", "contains", "not", "if", "then", "else", "additionalProperties")
_SUB_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_SUB_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _close(node: Any) -> None:
    if not isinstance(node, dict):
        return
    if isinstance(node.get("properties"), dict) and not any(k in node for k in _OPEN_KEYS):
        node["additionalProperties"] = False
    for key in _SUB_SCHEMA:
        if isinstance(node.get(key), dict):
            _close(node[key])
    for key in _SUB_SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            for sub in node[key]:
                _close(sub)
    for key in _SUB_SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            for sub in node[key].values():
                _close(sub)


def _compiled(entry: _TokenizerEntry, schema: Schema, strict: bool) -> llguidance.LLMatcher:
    """A fresh matcher for `schema`, copied from a cached, never-advanced template."""
    # Not sort_keys: property order is part of the grammar (keys are generated in schema order).
    key = json.dumps([schema, strict], ensure_ascii=False)
    with _lock:
        template = entry.grammars.get(key)
        if template is not None:
            entry.grammars.move_to_end(key)
    if template is None:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            close_objects(schema) if strict else schema, overrides=JSON_OPTIONS
        )
        template = llguidance.LLMatcher(entry.lltok, grammar, log_level=0)
        if template.is_error():
            raise ValueError(f"unsupported JSON schema: {template.get_error()}")
        with _lock:
            entry.grammars[key] = template
            while len(entry.grammars) > GRAMMAR_CACHE_SIZE:
                entry.grammars.popitem(last=False)
    return template.deep_copy()


def _eos_ids(
    tokenizer: PreTrainedTokenizerBase, eos_token_ids: int | Sequence[int] | None
) -> tuple[int, ...]:
    if eos_token_ids is None:
        eos_token_ids = tokenizer.eos_token_id
    ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids or ())
    if not ids:
        raise ValueError("constrained decoding needs an EOS token id to end a finished document")
    return tuple(sorted(set(int(i) for i in ids)))


class JsonSchemaLogitsProcessor(LogitsProcessor):
    """Masks each constrained row's logits to the tokens its JSON schema allows next.

    `schemas[i]` is the schema of batch row i, or None to leave that row untouched. `vocab_size`
    is the model's logits width (the config's, which may differ from len(tokenizer)).
    `eos_token_ids` must be the ids generate stops on (default: the tokenizer's EOS); once a
    document is complete they are the only tokens allowed. A row stops being constrained when it
    emits EOS, or a token its grammar rejects: the pad generate appends after a stop string ended
    that row (logged at debug level), or a bug upstream (recorded in `violations`, warned once).
    State lives in the processor: use a new one for every `generate` call.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        schemas: Sequence[Schema | None],
        *,
        eos_token_ids: int | Sequence[int] | None = None,
        strict: bool = True,
    ) -> None:
        self.eos_ids = _eos_ids(tokenizer, eos_token_ids)
        self.pad_id: int | None = tokenizer.pad_token_id
        # The mask must cover every id the tokenizer can produce, and every logit column.
        self.n_vocab = max(int(vocab_size), len(tokenizer))
        entry = _tokenizer_entry(tokenizer, self.n_vocab, self.eos_ids)
        self.matchers: list[llguidance.LLMatcher | None] = [
            None if s is None else _compiled(entry, s, strict) for s in schemas
        ]
        self.active = [m is not None for m in self.matchers]
        self.violations: dict[int, int] = {}  # row -> first token its grammar rejected
        # One bit per token, rows = batch rows; llguidance writes into it (contiguous, on CPU).
        self._bitmask = torch.full((len(self.matchers), (self.n_vocab + 31) // 32), -1, dtype=torch.int32)
        self._shifts = torch.arange(32, dtype=torch.int32)
        self._consumed: int | None = None  # input_ids length already fed to the matchers

    @property
    def batch_size(self) -> int:
        return len(self.matchers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != self.batch_size:
            raise ValueError(
                f"processor built for {self.batch_size} rows, got a batch of {input_ids.shape[0]}"
            )
        length = input_ids.shape[1]
        if self._consumed is None:
            self._consumed = length  # first step: all of input_ids is (left-padded) prompt
        elif length < self._consumed:
            raise RuntimeError("JsonSchemaLogitsProcessor holds per-call state: build a new one per generate")
        elif length > self._consumed:
            rows = [r for r in range(self.batch_size) if self.active[r]]
            if rows:
                new = input_ids[rows, self._consumed :].tolist()
                for row, tokens in zip(rows, new):
                    for token in tokens:
                        if self.active[row]:
                            self._advance(row, token)
            self._consumed = length

        rows = [r for r in range(self.batch_size) if self.active[r]]
        if rows:
            # What llguidance.torch.fill_next_token_bitmask_par does, without importing that module
            # (it pulls in torch._dynamo: seconds of import time).
            bm = self._bitmask
            _get_executor().unsafe_compute_mask_ptr(
                [(self.matchers[r], r) for r in rows],
                bm.data_ptr(),
                bm.shape[1] * bm.element_size(),
                bm.shape[0],
            )
            self._apply(scores, rows)
        return scores

    def _advance(self, row: int, token: int) -> None:
        matcher = self.matchers[row]
        assert matcher is not None
        if token in self.eos_ids:
            self.active[row] = False  # document ended; generate pads this row from now on
        elif not matcher.consume_token(token):
            self.active[row] = False  # leave the row alone rather than fail the whole batch
            if token == self.pad_id:
                log.debug("row %d finished outside the grammar (stop string?)", row)
            else:
                self.violations[row] = token
                log.warning(
                    "row %d: token %d is outside its JSON schema (%s)", row, token, matcher.get_error()
                )

    def _apply(self, scores: torch.Tensor, rows: list[int]) -> None:
        """scores[rows, t] = -inf for every token t the row's bitmask forbids (and every t >= n_vocab)."""
        n = len(rows)
        words = self._bitmask[rows].to(scores.device, non_blocking=True)
        allowed = ((words.unsqueeze(-1) >> self._shifts.to(scores.device)) & 1).bool().view(n, -1)
        width = min(scores.shape[1], self.n_vocab)
        whole = n == scores.shape[0]  # every row constrained: mask in place, no gather/scatter
        sub = scores if whole else scores[rows]
        sub[:, :width].masked_fill_(~allowed[:, :width], float("-inf"))
        sub[:, width:] = float("-inf")
        if not whole:
            scores[rows] = sub


def make_processor(
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    schemas: Sequence[Schema | None],
    *,
    eos_token_ids: int | Sequence[int] | None = None,
    strict: bool = True,
) -> JsonSchemaLogitsProcessor | None:
    """The constraint for one batch, or None when no row carries a schema (nothing to mask)."""
    if all(s is None for s in schemas):
        return None
    return JsonSchemaLogitsProcessor(
        tokenizer, vocab_size, schemas, eos_token_ids=eos_token_ids, strict=strict
    )
