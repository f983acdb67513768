"""Which caption gets which task: the first round's split by the task mix, then top-up rounds for a
task that ended with zero accepted rows (issue 9)."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable

import numpy as np

from unicorn_datasets.randomness import row_seed
from unicorn_datasets.stages.instruct.config import TASKS


def select_tasks(ids: list[str], mix: dict[str, int | float], seed: int) -> dict[str, str]:
    """Choose captions for each task, deterministically for ``seed``.

    ``mix`` values: an ``int`` is an absolute count (the 471K recipe: mc 171000, qa 199000,
    reasoning 100000); a ``float`` is a fraction of ``len(ids)``. When more than the available
    captions are asked for, every count is scaled down proportionally (largest remainder) and a
    ``UserWarning`` says so. Each id gets at most one task. Returns ``{id: task}`` in sorted id order.
    """
    unknown = set(mix) - set(TASKS)
    if unknown:
        raise ValueError(f"task mix: unknown task(s) {sorted(unknown)}; expected {', '.join(TASKS)}")
    uniq = sorted(set(map(str, ids)))
    if len(uniq) != len(ids):
        raise ValueError(f"select_tasks: {len(ids) - len(uniq)} duplicate caption id(s)")
    n = len(uniq)
    order = [t for t in TASKS if t in mix]  # fixed task order: the dict's order must not matter
    want: list[float] = []
    for t in order:
        v = mix[t]
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or not math.isfinite(v):
            raise ValueError(f"task mix: {t} = {v!r}; need a non-negative count (int) or fraction (float)")
        want.append(float(v) if isinstance(v, int) else float(v) * n)
    total = sum(want)
    if total > n:
        warnings.warn(
            f"task mix asks for {total:.0f} captions but {n} are available; "
            f"scaling every task's count by {n / total:.4f}",
            UserWarning,
            stacklevel=2,
        )
        want = [w * n / total for w in want]
        total = float(n)
    counts = _apportion(want, min(n, int(round(total))))
    perm = np.random.default_rng(seed).permutation(n)
    assigned: dict[str, str] = {}
    pos = 0
    for t, c in zip(order, counts, strict=True):
        for k in perm[pos : pos + c]:
            assigned[uniq[int(k)]] = t
        pos += c
    return dict(sorted(assigned.items()))


def _apportion(want: list[float], total: int) -> list[int]:
    """Integer counts summing to ``total`` (largest remainder; ties go to the earlier task)."""
    base = [math.floor(w + 1e-9) for w in want]
    rest = total - sum(base)
    by_frac = sorted(range(len(want)), key=lambda i: (-(want[i] - base[i]), i))
    for i in by_frac[: max(rest, 0)]:
        base[i] += 1
    return base


def topup_inputs(
    caption_ids: Iterable[str],
    done: Iterable[tuple[str, str, bool]],
    requested: Iterable[str],
    first_round: dict[str, str],
    seed: int,
    budget: int,
) -> dict[str, str]:
    """The next top-up round's ``{caption id: task}``; ``{}`` when no more round is needed or possible.

    ``done`` holds one ``(id, task, accepted)`` per row generated so far (every round). A requested
    task with no accepted row gets captions nobody has used yet, as many as it had in the first
    round (at least 1), while the ``budget`` of extra captions (over all rounds) lasts. The pool is
    ordered by a per-id hash of ``seed``, so each round is deterministic and the same on every rank.
    """
    used: set[str] = set()
    accepted: Counter[str] = Counter()
    for rid, task, ok in done:
        used.add(rid)
        accepted[task] += ok
    left = budget - len(used - set(first_round))
    empty = [t for t in TASKS if t in set(requested) and accepted[t] == 0]
    if left <= 0 or not empty:
        return {}
    unused = (i for i in map(str, caption_ids) if i not in used)
    pool = sorted(unused, key=lambda i: (row_seed(seed, i, stream="topup"), i))
    per_task = Counter(first_round.values())
    out: dict[str, str] = {}
    for task in empty:
        take = min(max(1, per_task[task]), left - len(out))
        for rid in pool[len(out) : len(out) + take]:
            out[rid] = task
    return dict(sorted(out.items()))
