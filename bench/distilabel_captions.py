"""Stage-1 captions with distilabel (TextGeneration + OpenAILLM), run by engine_throughput.py in its own venv.

Reads a JSON job {"url", "model", "prompts": [...], "k", "replicas", "generation_kwargs"} and prints one JSON
line with the row count and the wall time of `pipeline.run`. distilabel sends one step batch
(`input_batch_size` rows) at a time per replica and waits for all of it, so its window is
`input_batch_size * replicas`; we keep that product at K.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time


def main(job_path: str) -> None:
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts, StepResources
    from distilabel.steps.tasks import TextGeneration

    job = json.load(open(job_path))
    k, replicas = int(job["k"]), int(job.get("replicas", 1))
    per_replica = max(1, k // replicas)
    with tempfile.TemporaryDirectory() as cache, Pipeline(name="unicorn-captions-bench", cache_dir=cache) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in job["prompts"]], batch_size=k)
        gen = TextGeneration(
            llm=OpenAILLM(model=job["model"], base_url=job["url"] + "/v1", api_key="not-needed",
                          timeout=600, max_retries=3,
                          generation_kwargs=job["generation_kwargs"]),
            input_batch_size=per_replica,
            resources=StepResources(replicas=replicas),
        )
        load >> gen
        t0 = time.monotonic()
        distiset = pipeline.run(use_cache=False)
        secs = time.monotonic() - t0
    rows = next(iter(distiset.values()))["train"]
    ok = sum(1 for g in rows["generation"] if g)
    print(json.dumps({"rows": len(rows), "with_text": ok, "seconds": secs}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
