"""Per-row deterministic sampling inside `model.generate`.

torch's global RNG makes a sampled row depend on what else is in its batch. Here each row owns a
torch.Generator seeded from (build seed, row id, attempt); this processor draws the next token
for every row and masks all others, and generate runs greedy on top of it. A row's text then
depends only on its own seed and prompt, not on batch composition or process count.

CPU kernels can differ in the last bits of a logit depending on memory layout (we saw a single
token flip between a 1-process and a 2-process build of the same shard). Logits are therefore
snapped to a 1/64-nat grid and the draw is done in float64 by inverse CDF with a stable order,
so ulp-level noise no longer moves a sample except in the rare case it straddles a grid line.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

LOGIT_GRID = 64.0  # 1/64 nat: far below what changes the sampling distribution in practice


NUCLEUS_CANDIDATES = 512  # sort only the top tokens; the full vocabulary only if they fall short of top_p


def snap(logits: torch.Tensor) -> torch.Tensor:
    """Exact in float32 (scaling by a power of two and rounding lose nothing for |logit| < 2**17)."""
    return torch.round(logits.float() * LOGIT_GRID) / LOGIT_GRID


class PerRowSampler(LogitsProcessor):
    def __init__(self, seeds: list[int], temperature: float, top_p: float, suppress_ids: list[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p
        self.suppress = torch.tensor(sorted(set(suppress_ids)), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = snap(scores)
        if len(self.suppress):
            scores[:, self.suppress.to(scores.device)] = -float("inf")
        out = torch.full_like(scores, -float("inf"))
        for row, gen in enumerate(self.generators):
            logits = scores[row].cpu()
            if not torch.isfinite(logits).any():  # finished row fully masked by a constraint
                out[row] = scores[row]
                continue
            if self.temperature <= 0:
                token = int(torch.argmax(logits))  # first index on ties: stable
            else:
                token = self._draw(logits, gen)
            out[row, token] = 0.0
        return out.to(torch.float32)

    def _draw(self, logits: torch.Tensor, gen: torch.Generator) -> int:
        probs = torch.softmax(logits.double() / self.temperature, dim=-1)
        if self.top_p >= 1.0:  # no nucleus: inverse CDF in token-id order needs no sort at all
            order = torch.arange(len(probs))
            cdf = torch.cumsum(probs, dim=-1)
        else:
            p_sorted, order = self._sorted(probs, NUCLEUS_CANDIDATES)
            cdf = torch.cumsum(p_sorted, dim=-1)
            if cdf[-1] < self.top_p and len(cdf) < len(probs):  # a flat distribution: sort everything
                p_sorted, order = self._sorted(probs, len(probs))
                cdf = torch.cumsum(p_sorted, dim=-1)
            keep = int(torch.searchsorted(cdf, torch.tensor(self.top_p, dtype=cdf.dtype))) + 1  # always >= 1
            cdf = cdf[:keep]
        u = torch.rand((), generator=gen, dtype=torch.float64) * cdf[-1]
        idx = min(int(torch.searchsorted(cdf, u, right=True)), len(cdf) - 1)
        return int(order[idx])

    @staticmethod
    def _sorted(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most probable tokens in descending order, ties by token id (a stable, layout-free order)."""
        if k >= len(probs):
            return torch.sort(probs, descending=True, stable=True)
        top = torch.topk(probs, k).indices
        cutoff = probs[top].min()
        cand = torch.nonzero(probs >= cutoff).flatten()  # all tokens tied at the cutoff too: the set is exact
        p_sorted, pos = torch.sort(probs[cand], descending=True, stable=True)
        return p_sorted, cand[pos]
