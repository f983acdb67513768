"""In-process backend: a transformers causal LM on this process's device (the embedded default)."""

from __future__ import annotations

import re
import threading
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from unicorn_datasets.generation.base import (
    GenerationRequest,
    GenerationResult,
    GenerationStopped,
    SamplingParams,
    current_stop,
)
from unicorn_datasets.generation.continuous import continuous_supports, generate_continuous
from unicorn_datasets.generation.hf_models import load_causal_lm, resolve_model
from unicorn_datasets.generation.sampling import PerRowSampler
from unicorn_datasets.generation.stopping import StopOnStrings, StopWhenSet

# Token ids a text-only caption must never contain (image placeholders and other specials).
_SPECIAL_TOKEN = re.compile(r"^<.*>$|^\[.*\]$")


BATCHING = ("static", "continuous")


class TransformersBackend:
    """`batching`: "static" (padded batches of `batch_size`, per-row seeds) or "continuous" (transformers'
    `generate_batch`; see `continuous.py` for what it cannot honour)."""

    def __init__(self, model: str, *, device: str = "cpu", batch_size: int = 8, dtype: Any = None,
                 batching: str = "static") -> None:
        if batching not in BATCHING:
            raise ValueError(f"llm.batching must be one of {', '.join(BATCHING)}, got {batching!r}")
        self.batching = batching
        self.source = resolve_model(model)
        self.model, self.tokenizer = load_causal_lm(self.source, device=device, dtype=dtype)
        self.device = device
        self.batch_size = batch_size
        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only batched generation needs left padding
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.supports_chat = bool(getattr(tok, "chat_template", None))
        self.eos_ids = self._eos_ids()
        self.suppress_ids = self._suppress_ids()

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        ids = [i for i in ids if i is not None]
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return sorted(set(ids))

    def _suppress_ids(self) -> list[int]:
        keep = set(self.eos_ids)
        ids = [
            i for i, t in self.tokenizer.added_tokens_decoder.items() if _SPECIAL_TOKEN.match(str(t)) and i not in keep
        ]
        ids += [i for i in self.tokenizer.all_special_ids if i not in keep]
        vocab = self.model.config.get_text_config().vocab_size
        return sorted({i for i in ids if i < vocab})

    def describe(self) -> dict[str, Any]:
        return {"backend": "transformers", **self.source.describe(), "chat_template": self.supports_chat,
                "batching": self.batching}

    @property
    def max_in_flight(self) -> int:  # one batch on the device at a time
        return self.batch_size

    def check_available(self) -> None:  # loaded in __init__: a model that failed to load raised there
        pass

    def close(self) -> None:  # nothing held beyond the model, which the garbage collector frees
        pass

    def _render(self, req: GenerationRequest) -> str:
        if req.prompt is not None:
            return req.prompt
        if not self.supports_chat:
            raise ValueError(f"{self.source.spec} has no chat template: use completion prompts for base models")
        return self.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        if not requests:
            return []
        stop_flag = current_stop()
        texts = [self._render(r) for r in requests]
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        if self.batching == "continuous" and continuous_supports(requests, params):
            # transformers' generate_batch cannot be stopped midway: an interrupt waits for this call
            return _with_prompt_tokens(_unless_stopped(stop_flag, self._generate_continuous(requests, texts, params)),
                                       lengths)
        # Sort by prompt length so batches pad little; group by stop strings (one criteria per call).
        order = sorted(range(len(requests)), key=lambda i: (requests[i].stop, lengths[i], requests[i].key))
        results: list[GenerationResult | None] = [None] * len(requests)
        start = 0
        while start < len(order):
            stop = requests[order[start]].stop
            chunk = [order[start]]
            while (
                len(chunk) < self.batch_size
                and start + len(chunk) < len(order)
                and requests[order[start + len(chunk)]].stop == stop
            ):
                chunk.append(order[start + len(chunk)])
            batch = self._generate_batch([requests[i] for i in chunk], [texts[i] for i in chunk], params, stop_flag)
            for i, res in zip(chunk, _unless_stopped(stop_flag, batch)):
                results[i] = res
            start += len(chunk)
        return _with_prompt_tokens(results, lengths)  # type: ignore[arg-type]

    def _generate_continuous(
        self, reqs: list[GenerationRequest], texts: list[str], params: SamplingParams
    ) -> list[GenerationResult]:
        prompts = [self.tokenizer(t)["input_ids"] for t in texts]  # special tokens included, as the static path
        rows = generate_continuous(self.model, prompts, params, eos_ids=self.eos_ids,
                                   pad_id=self.tokenizer.pad_token_id, suppress_ids=self.suppress_ids,
                                   seeds=[r.seed for r in reqs])
        return [self._result(row, list(r.stop), params) for row, r in zip(rows, reqs, strict=True)]

    @torch.inference_mode()
    def _generate_batch(
        self, reqs: list[GenerationRequest], texts: list[str], params: SamplingParams,
        stop_flag: threading.Event | None = None,
    ) -> list[GenerationResult]:
        tok = self.tokenizer
        enc = tok(texts, return_tensors="pt", padding=True).to(self.device)
        processors = LogitsProcessorList()
        schemas = [r.json_schema for r in reqs]
        if any(s is not None for s in schemas):
            from unicorn_datasets.generation.constrained import make_processor

            vocab = self.model.config.get_text_config().vocab_size
            constraint = make_processor(tok, vocab, schemas, eos_token_ids=self.eos_ids)
            if constraint is not None:
                processors.append(constraint)
        processors.append(PerRowSampler([r.seed for r in reqs], params.temperature, params.top_p, self.suppress_ids))
        stop = list(reqs[0].stop)
        criteria = StoppingCriteriaList([StopOnStrings(tok, stop, enc["input_ids"].shape[1])] if stop else [])
        if stop_flag is not None:
            criteria.append(StopWhenSet(stop_flag))  # an interrupt ends the call after the current token
        out = self.model.generate(
            **enc,
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            logits_processor=processors,
            repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1.0 else None,
            stopping_criteria=criteria or None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=self.eos_ids,
            top_k=None,
            top_p=None,
            temperature=None,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        return [self._result(row, stop, params) for row in new.tolist()]

    def _result(self, row: list[int], stop: list[str], params: SamplingParams) -> GenerationResult:
        """Generated ids -> text cut at EOS / padding / the first stop string, with its finish reason."""
        tok = self.tokenizer
        n, hit_eos = 0, False
        for t in row:
            if t in self.eos_ids:
                hit_eos = True
                break
            if t == tok.pad_token_id:
                break
            n += 1
        text = tok.decode(row[:n], skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        finish = "stop" if (hit_eos or cut >= 0 or n < params.max_new_tokens) else "length"
        if cut >= 0:
            text = text[:cut]
        return GenerationResult(text=text, n_tokens=n, finish_reason=finish)


def _unless_stopped(flag: threading.Event | None, results: list[GenerationResult]) -> list[GenerationResult]:
    if flag is not None and flag.is_set():
        raise GenerationStopped("generation stopped: the build is ending")
    return results


def _with_prompt_tokens(results: list[GenerationResult], lengths: list[int]) -> list[GenerationResult]:
    """Each result carries its prompt's token count (as servers report usage.prompt_tokens): `unicorn plan`."""
    for res, n in zip(results, lengths, strict=True):
        res.extra["prompt_tokens"] = n
    return results
