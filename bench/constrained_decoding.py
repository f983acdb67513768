"""Constrained vs unconstrained decoding on the offline Gemma-3-270M: same prompts, batch, greedy.

Reports the speed ratio measured in one process (absolute numbers depend on the machine and its
load). Runs alternate between the two modes and the median of each is kept, so a busy CPU
affects both alike. Usage:

    python bench/constrained_decoding.py [--max-new-tokens 200] [--reps 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from unicorn_datasets.generation.constrained import make_processor
from unicorn_datasets.generation.hf_models import OFFLINE_GEMMA, load_causal_lm, resolve_model

EXAMPLE = {
    "QA Pairs": [
        {"Question": "What color is the boat?", "Answer": "The boat is red."},
        {"Question": "What is standing on the dock?", "Answer": "A gray heron stands at the far end."},
    ]
}
CAPTIONS = [
    "A brown dog sleeps on a blue rug next to a wooden door.",
    "Two children fly a yellow kite on a windy beach under a cloudy sky.",
    "A bowl of green apples sits on a kitchen table beside an open book.",
    "A red bus waits at a crowded street corner in the evening rain.",
]
STOP = "\nDescription:"
TEXT = {"type": "string", "minLength": 1}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "QA Pairs": {
            "type": "array",
            "minItems": 2,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"Question": TEXT, "Answer": TEXT},
                "required": ["Question", "Answer"],
            },
        }
    },
    "required": ["QA Pairs"],
}


def prompt(caption: str) -> str:
    return (
        "Each image description below is followed by 2 to 3 question-answer pairs about the image,"
        " as JSON.\n\nDescription: A small red fishing boat is tied to a wooden dock;"
        " a gray heron stands at the far end.\n"
        f"JSON: {json.dumps(EXAMPLE, ensure_ascii=False)}\n\nDescription: {caption}\nJSON: "
    )


def valid(text: str) -> bool:
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    pairs = obj.get("QA Pairs") if isinstance(obj, dict) else None
    return (
        isinstance(pairs, list)
        and 2 <= len(pairs) <= 3
        and all(
            isinstance(p, dict)
            and set(p) == {"Question", "Answer"}
            and all(isinstance(v, str) and v for v in p.values())
            for p in pairs
        )
    )


class Timed(LogitsProcessor):
    """Wraps a processor and sums the time spent inside it."""

    def __init__(self, inner: LogitsProcessor) -> None:
        self.inner, self.seconds = inner, 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - t
        return out


class Clock(LogitsProcessor):
    """Last in the list, in both modes: a timestamp per step (the first one ends the prompt's forward)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.stamps.append(time.perf_counter())
        return scores


def run(model: Any, tok: Any, constrained: bool, max_new_tokens: int, eos: list[int]) -> dict[str, Any]:
    enc = tok([prompt(c) for c in CAPTIONS], return_tensors="pt", padding=True)
    procs: list[LogitsProcessor] = []
    timed = None
    t0 = time.perf_counter()
    if constrained:
        proc = make_processor(tok, model.config.vocab_size, [SCHEMA] * len(CAPTIONS), eos_token_ids=eos)
        assert proc is not None
        timed = Timed(proc)
        procs.append(timed)
    clock = Clock()
    procs.append(clock)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList(procs),
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos,
        )
    end = time.perf_counter()
    wall = end - t0
    new = out[:, enc["input_ids"].shape[1] :].tolist()
    useful, texts = 0, []
    for row in new:
        n = next((i for i, t in enumerate(row) if t in eos), len(row))
        useful += min(n + 1, len(row))  # tokens a caller keeps, EOS included
        # what the backend keeps: text up to EOS, cut at the few-shot stop string
        texts.append(tok.decode(row[:n], skip_special_tokens=True).split(STOP)[0].strip())
    steps = len(new[0])
    decode = end - clock.stamps[0]  # the steps after the first token: no prompt forward pass in them
    return {
        "stamps": clock.stamps,
        "wall": wall,
        "steps": steps,
        "ms_per_step": 1000 * decode / (steps - 1),
        "tok_s": useful / wall,  # tokens up to EOS, per second of the whole call
        "batch_tok_s": (steps - 1) * len(new) / decode,
        "proc_ms_per_step": 1000 * timed.seconds / steps if timed else 0.0,
        "valid": sum(valid(t) for t in texts),
        "texts": texts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--reps", type=int, default=2, help="timed runs per mode (alternating)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t = time.perf_counter()
    model, tok = load_causal_lm(resolve_model(OFFLINE_GEMMA))
    tok.padding_side = "left"
    gen_eos = model.generation_config.eos_token_id
    gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
    eos = sorted({tok.eos_token_id, *gen_eos})  # what the backend stops on, so what the grammar forces
    print(f"model loaded in {time.perf_counter() - t:.1f}s; threads {torch.get_num_threads()}; eos {eos}")

    t = time.perf_counter()
    make_processor(tok, model.config.vocab_size, [SCHEMA], eos_token_ids=eos)
    first = time.perf_counter() - t
    t = time.perf_counter()
    make_processor(tok, model.config.vocab_size, [SCHEMA] * 4, eos_token_ids=eos)
    again = time.perf_counter() - t
    print(f"first processor (tokenizer + schema): {first:.2f}s; cached, batch of 4: {1000 * again:.2f}ms")

    for c in (False, True):  # warm-up: first calls pay one-off allocation costs
        run(model, tok, c, 8, eos)
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.reps):
        for c in (False, True):
            results[c].append(run(model, tok, c, args.max_new_tokens, eos))

    def med(c: bool, key: str) -> float:
        return statistics.median(r[key] for r in results[c])

    print(f"\nbatch {len(CAPTIONS)}, greedy, max_new_tokens {args.max_new_tokens}, median of {args.reps}")
    cols = [
        ("mode", 14),
        ("steps", 6),
        ("ms/step", 9),
        ("batch tok/s", 12),
        ("tok/s", 8),
        ("mask ms/step", 13),
    ]
    header = f"{cols[0][0]:<{cols[0][1]}}" + "".join(f"{name:>{w}}" for name, w in cols[1:]) + f"{'valid':>7}"
    print(header)
    print("-" * len(header))
    for c in (False, True):
        mode = "constrained" if c else "unconstrained"
        print(
            f"{mode:<14}{med(c, 'steps'):>6.0f}{med(c, 'ms_per_step'):>9.1f}"
            f"{med(c, 'batch_tok_s'):>12.1f}{med(c, 'tok_s'):>8.1f}{med(c, 'proc_ms_per_step'):>13.2f}"
            f"{results[c][-1]['valid']:>5}/{len(CAPTIONS)}"
        )
    # Same decode steps in both modes (constrained rows stop early, and later steps cost a bit more).
    k = min(int(med(c, "steps")) for c in (False, True)) - 1

    def ms_first_k(c: bool) -> float:
        return statistics.median(1000 * (r["stamps"][k] - r["stamps"][0]) / k for r in results[c])

    ratio = ms_first_k(False) / ms_first_k(True)
    print(
        f"\nfirst {k} decode steps: unconstrained {ms_first_k(False):.1f} ms/step, "
        f"constrained {ms_first_k(True):.1f} ms/step"
    )
    print(f"ratio constrained/unconstrained, decode throughput (tokens/s): {ratio:.3f}")
    share = med(True, "proc_ms_per_step") / med(True, "ms_per_step")
    print(f"processor share of a constrained decode step: {share:.1%}")
    print("\nconstrained sample:", results[True][-1]["texts"][0][:300])
    print("unconstrained sample:", results[False][-1]["texts"][0][:300])


if __name__ == "__main__":
    main()
