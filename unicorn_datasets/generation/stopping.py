"""Stop a row once its generated text contains a stop string (e.g. a blank line in completion mode).

transformers' own `stop_strings` pre-scans the whole vocabulary per call (slow for 262K-token
vocabularies, and it fails on some word-level tokenizers); decoding each row's recent tail is cheap.
"""

from __future__ import annotations

import threading

import torch
from transformers import StoppingCriteria


class StopOnStrings(StoppingCriteria):
    def __init__(self, tokenizer: object, stops: list[str], prompt_len: int, tail_tokens: int = 12) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_len = prompt_len
        self.tail = tail_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, self.prompt_len :]
        if new.shape[1] == 0:
            return done
        for row in range(new.shape[0]):
            text = self.tokenizer.decode(new[row, -self.tail :], skip_special_tokens=False)  # type: ignore[attr-defined]
            done[row] = any(s in text for s in self.stops)
        return done


class StopWhenSet(StoppingCriteria):
    """Every row stops once `event` is set (the build is being interrupted): checked after each token."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
