"""Per-row deterministic sampling inside `model.generate`.

torch's global RNG makes a sampled row depend on what else is in its batch. Here each row owns a
torch.Generator seeded from (build seed, row id, attempt); this processor draws the next token
for every row and masks all others, and generate runs greedy on top of it. A row's text then
depends only on its own seed and prompt, not on batch composition or process count.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class PerRowSampler(LogitsProcessor):
    def __init__(self, seeds: list[int], temperature: float, top_p: float, suppress_ids: list[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p
        self.suppress = torch.tensor(sorted(set(suppress_ids)), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if len(self.suppress):
            scores[:, self.suppress.to(scores.device)] = -float("inf")
        if self.temperature <= 0:
            return scores  # greedy: generate's argmax picks the token
        out = torch.full_like(scores, -float("inf"))
        for row, gen in enumerate(self.generators):
            logits = scores[row]
            if not torch.isfinite(logits).any():  # finished row fully masked by a constraint
                out[row] = logits
                continue
            probs = torch.softmax(logits / self.temperature, dim=-1).cpu()
            if self.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < self.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            token = torch.multinomial(probs, 1, generator=gen)
            out[row, token.to(scores.device)] = 0.0
        return out
