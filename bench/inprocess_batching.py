"""In-process generation throughput: a bare `model.generate` loop vs the backend's static and continuous batching.

    python bench/inprocess_batching.py --model gemma3-270m-gguf --rows 16 --threads 1

The same Stage-1 prompts (the demo recipe's few-shot completion prompts for its first seeds) go through:

- bare:       what a user would write: padded batches of `--batch-size`, `model.generate(do_sample=True,
              temperature, top_p, stop_strings)`, one global RNG;
- static:     `TransformersBackend(batching="static")` (our path: per-row seeded sampling, stop strings);
- continuous: `TransformersBackend(batching="continuous")` (transformers' `generate_batch`).

tokens/s = tokens of the kept texts (each re-tokenized, cut at the first stop string) / wall seconds, so
every mode is counted the same way. Modes alternate for `--repeat` rounds; the best round of each is kept
(the CPU is shared). The sampling is the demo recipe's caption sampling without its repetition penalty
(continuous batching in transformers drops that processor, and our backend then falls back to static).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from unicorn_datasets.generation.base import GenerationRequest, SamplingParams  # noqa: E402
from unicorn_datasets.generation.transformers_backend import TransformersBackend  # noqa: E402
from unicorn_datasets.pipeline.loop import collect_seeds  # noqa: E402
from unicorn_datasets.recipe import CaptionsSection, load_recipe  # noqa: E402
from unicorn_datasets.stages import captions  # noqa: E402


def caption_requests(rows: int) -> list[GenerationRequest]:
    recipe = load_recipe("demo", {"limit": rows})
    seeds = collect_seeds(recipe)[0]
    cfg = CaptionsSection()
    return [captions.build_request(s.id, s.seed, cfg, 0, 0, "completion") for s in seeds]


def tiny_model() -> str:
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import make_tiny_llm

    return str(make_tiny_llm(Path(tempfile.mkdtemp(prefix="tiny_llm_"))))


def kept_tokens(tok: Any, texts: list[str]) -> int:
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def run_bare(backend: TransformersBackend, reqs: list[GenerationRequest], params: SamplingParams,
             batch_size: int) -> list[str]:
    tok, model = backend.tokenizer, backend.model
    stops = list(reqs[0].stop)
    texts: list[str] = []
    torch.manual_seed(0)
    for start in range(0, len(reqs), batch_size):
        chunk = [r.prompt or "" for r in reqs[start:start + batch_size]]
        enc = tok(chunk, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=params.temperature, top_p=params.top_p,
                                 top_k=None, max_new_tokens=params.max_new_tokens, stop_strings=stops, tokenizer=tok,
                                 pad_token_id=tok.pad_token_id, eos_token_id=backend.eos_ids)
        for row in out[:, enc["input_ids"].shape[1]:]:
            text = tok.decode(row, skip_special_tokens=True)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            texts.append(text[:cut] if cut >= 0 else text)
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m-gguf", help="a model spec, or 'tiny' (tests' random model)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--modes", default="bare,static,continuous")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "inprocess_batching.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    reqs = caption_requests(a.rows)
    params = SamplingParams(max_new_tokens=a.max_new_tokens, temperature=0.7, top_p=0.9)
    backend = TransformersBackend(tiny_model() if a.model == "tiny" else a.model, batch_size=a.batch_size)
    best: dict[str, dict[str, Any]] = {}
    for round_ in range(a.repeat):
        for mode in a.modes.split(","):
            t0 = time.perf_counter()
            if mode == "bare":
                texts = run_bare(backend, reqs, params, a.batch_size)
            else:
                backend.batching = mode
                texts = [r.text for r in backend.generate(reqs, params)]
            secs = time.perf_counter() - t0
            tokens = kept_tokens(backend.tokenizer, texts)
            row = {"seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs,
                   "mean_words": sum(len(t.split()) for t in texts) / len(texts)}
            print(f"round {round_} {mode}: {row}", file=sys.stderr, flush=True)
            if mode not in best or row["tokens_per_s"] > best[mode]["tokens_per_s"]:
                best[mode] = row
    results = {"settings": {**vars(a), "json": str(a.json)}, "best": best}
    a.json.write_text(json.dumps(results, indent=1))
    print("| mode | tokens | seconds | tokens/s | vs bare |\n|---|--:|--:|--:|--:|")
    base = best.get("bare", {}).get("tokens_per_s")
    for mode, r in best.items():
        ratio = f"{r['tokens_per_s'] / base:.3f}" if base else "-"
        print(f"| {mode} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | {ratio} |")
    if "static" in best and "continuous" in best:
        ratio = best["continuous"]["tokens_per_s"] / best["static"]["tokens_per_s"]
        print(f"\ncontinuous / static tokens/s: {ratio:.3f}")


if __name__ == "__main__":
    main()
