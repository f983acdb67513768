"""Stage 2 (instruction data): validation, repairs, conversation format, task selection, retries."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import Counter
from typing import Any

import pytest

from unicorn_datasets.generation.base import GenerationRequest, GenerationResult, SamplingParams
from unicorn_datasets.generation.engine import Engine
from unicorn_datasets.randomness import row_seed
from unicorn_datasets.recipe import InstructSection
from unicorn_datasets.stages import instruct as ins
from unicorn_datasets.stages.instruct import (
    InstructRows,
    InstructStage,
    json_schema,
    select_tasks,
    to_conversations,
    validate,
)
from unicorn_datasets.stages.instruct.prompting import fewshot

CAPTION = (
    "A golden retriever sits on a green park bench beside a woman in a yellow raincoat. "
    "Behind them a row of tall oak trees lines a gravel path, and puddles on the ground reflect "
    "the gray overcast sky. A red umbrella leans against the armrest of the bench."
)
CFG = InstructSection()


def mc_item(q: str = "What color is the umbrella?", answer: Any = "B", **over: Any) -> dict[str, Any]:
    item = {"Question": q, "Options": {"A": "Blue", "B": "Red", "C": "Green", "D": "Black"}, "Answer": answer}
    item.update(over)
    return item


def mc_items(n: int = 6) -> list[dict[str, Any]]:
    return [mc_item(q=f"Question number {i} about the image?") for i in range(n)]


_SAID = ("bench", "raincoat", "umbrella", "puddles", "gravel path", "oak trees", "armrest", "sky")


def qa_items(n: int = 6) -> list[dict[str, Any]]:
    """Distinct answers from the caption's own words (Stage 2's ungrounded/repeated answer checks pass them)."""
    return [
        {"Question": f"Question {i} about the dog?", "Answer": f"It sits near the {_SAID[i % len(_SAID)]}, answer {i}."}
        for i in range(n)
    ]


def dump(items: list[dict[str, Any]]) -> str:
    return json.dumps({"QA Pairs": items})


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("task", "raw", "reason"),
    [
        ("mc", dump(mc_items())[:-40], "truncated_json"),
        ("mc", '{"QA Pairs": [{"Question": "What is', "truncated_json"),
        ("mc", '{"QA Pairs": [}, ,]}', "bad_json"),
        ("qa", "I cannot answer that.", "bad_json"),
        ("mc", "[1, 2, 3]", "not_an_object"),
        (
            "qa",
            '{"QA Pairs": [{"Question": "a?", "Answer": "b", "Question": "c?", "Answer": "d"}]}',
            "duplicate_keys",
        ),
        ("mc", '{"pairs": []}', "missing_qa_pairs"),
        ("mc", dump(mc_items(5)), "too_few_items"),
        ("qa", dump(qa_items(2)), "too_few_items"),
        ("mc", dump([*mc_items(5), mc_item(answer="E")]), "answer_not_an_option_letter"),
        ("mc", dump([*mc_items(5), mc_item(answer="A dog")]), "answer_not_an_option_letter"),
        ("mc", dump([*mc_items(5), mc_item(Options={"A": "x", "B": "y", "C": "z"})]), "missing_options"),
        ("mc", dump([*mc_items(5), {"Question": "Which?", "Answer": "A"}]), "missing_options"),
        (
            "mc",
            dump([*mc_items(5), mc_item(Options={"A": "w", "B": "x", "C": "y", "D": "z", "E": "v"})]),
            "extra_options",
        ),
        (
            "mc",
            dump([*mc_items(5), mc_item(Options={"A": "Red", "B": "red.", "C": "y", "D": "z"})]),
            "duplicate_options",
        ),
        (
            "mc",
            dump([*mc_items(5), mc_item(Options={"A": "Red", "B": " ", "C": "y", "D": "z"})]),
            "empty_option",
        ),
        ("mc", dump([*mc_items(5), mc_item(q="  ")]), "empty_question"),
        ("qa", dump([*qa_items(5), {"Question": "Why?", "Answer": ""}]), "empty_answer"),
        ("qa", dump([*qa_items(5), {"Question": "Why?"}]), "missing_answer"),
        ("qa", dump([*qa_items(5), "just a string"]), "item_not_an_object"),
        ("mc", dump([*mc_items(5), mc_item(q="Question number 0 about the image")]), "duplicate_questions"),
    ],
)
def test_broken_outputs_are_rejected_with_their_reason(task: str, raw: str, reason: str) -> None:
    v = validate(task, raw, CAPTION, CFG)
    assert v.items is None
    assert v.reason == reason
    assert reason in ins.REJECT_REASONS


def test_verbatim_copied_qa_answer_is_rejected_but_short_phrases_are_not() -> None:
    copied = {"Question": "What is behind them?", "Answer": "A row of tall oak trees lines a gravel path."}
    v = validate("qa", dump([*qa_items(5), copied]), CAPTION, CFG)
    assert v.reason == "verbatim_copy"
    # a short answer that equals a caption phrase is a normal answer, not copying
    short = {"Question": "What leans against the armrest?", "Answer": "A red umbrella."}
    assert validate("qa", dump([*qa_items(5), short]), CAPTION, CFG).reason is None
    # reworded answer passes
    reworded = {"Question": "What is behind them?", "Answer": "Tall oaks stand along a gravel walk."}
    assert validate("qa", dump([*qa_items(5), reworded]), CAPTION, CFG).reason is None
    # the threshold is configurable
    loose = InstructSection(max_verbatim_fraction=1.0)
    assert validate("qa", dump([*qa_items(5), copied]), CAPTION, loose).reason is None


def test_too_many_items_is_truncated_or_rejected_by_config() -> None:
    v = validate("mc", dump(mc_items(10)), CAPTION, CFG)
    assert v.reason is None and len(v.items or []) == 8 and "truncated_items" in v.repairs
    strict = InstructSection(truncate_extra_items=False)
    assert validate("mc", dump(mc_items(10)), CAPTION, strict).reason == "too_many_items"


# --------------------------------------------------------------------------- repairs


@pytest.mark.parametrize("answer", ["B.", "B) Red", "(B)", "b", "Red", "red.", "Option B", "The answer is B"])
def test_repairable_mc_answers_become_the_letter(answer: str) -> None:
    v = validate("mc", dump([*mc_items(5), mc_item(q="Umbrella color?", answer=answer)]), CAPTION, CFG)
    assert v.reason is None, v
    assert v.items is not None and v.items[-1]["Answer"] == "B"
    assert "normalized_answer" in v.repairs


def test_contradictory_letter_and_text_is_not_guessed() -> None:
    v = validate("mc", dump([*mc_items(5), mc_item(q="Umbrella color?", answer="B) Blue")]), CAPTION, CFG)
    assert v.reason == "answer_not_an_option_letter"


def test_other_safe_repairs_are_recorded() -> None:
    item = {
        "question": "  What color is the raincoat? ",
        "options": ["A. Yellow", "B. Blue", "C. Red", "D. White"],
        "answer": "A",
        "explanation": "dropped",
    }
    raw = "Sure! Here is the JSON:\n```json\n" + json.dumps({"qa_pairs": [*mc_items(5), item]}) + "\n```"
    v = validate("mc", raw, CAPTION, CFG)
    assert v.reason is None, v
    assert v.items is not None
    assert v.items[-1] == {
        "Question": "What color is the raincoat?",
        "Options": {"A": "Yellow", "B": "Blue", "C": "Red", "D": "White"},
        "Answer": "A",
    }
    for r in (
        "stripped_preamble",
        "ignored_trailing_text",
        "renamed_keys",
        "dropped_extra_keys",
        "options_list_to_dict",
        "stripped_option_labels",
        "stripped_whitespace",
    ):
        assert r in v.repairs
        assert r in ins.REPAIRS
    assert validate("qa", dump(qa_items()), CAPTION, CFG).repairs == []


# --------------------------------------------------------------------------- format, schema, prompts


def test_to_conversations_mc_format() -> None:
    conv = to_conversations("mc", [mc_item(), mc_item(q="Is it raining?", answer="D")])
    assert [t["from"] for t in conv] == ["human", "gpt", "human", "gpt"]
    assert conv[0]["value"] == "<image>\nWhat color is the umbrella?\nA. Blue\nB. Red\nC. Green\nD. Black"
    assert conv[1]["value"] == "B"
    assert conv[2]["value"].startswith("Is it raining?\nA. Blue")
    assert conv[3]["value"] == "D"
    assert sum("<image>" in t["value"] for t in conv) == 1


def test_to_conversations_qa() -> None:
    conv = to_conversations("qa", qa_items(2))
    assert conv == [
        {"from": "human", "value": "<image>\nQuestion 0 about the dog?"},
        {"from": "gpt", "value": "It sits near the bench, answer 0."},
        {"from": "human", "value": "Question 1 about the dog?"},
        {"from": "gpt", "value": "It sits near the raincoat, answer 1."},
    ]


def test_json_schema_sanity() -> None:
    s = json_schema("mc", CFG)
    arr = s["properties"]["QA Pairs"]
    assert (arr["minItems"], arr["maxItems"]) == (6, 8)
    item = arr["items"]
    assert item["additionalProperties"] is False and s["additionalProperties"] is False
    assert set(item["required"]) == {"Question", "Options", "Answer"}
    assert item["properties"]["Answer"]["enum"] == ["A", "B", "C", "D"]
    assert item["properties"]["Options"]["required"] == ["A", "B", "C", "D"]
    assert item["properties"]["Question"]["minLength"] == 1
    r = json_schema("reasoning", InstructSection(items={"reasoning": (1, 3)}))
    assert (r["properties"]["QA Pairs"]["minItems"], r["properties"]["QA Pairs"]["maxItems"]) == (1, 3)
    assert set(r["properties"]["QA Pairs"]["items"]["required"]) == {"Question", "Answer"}
    json.dumps(s)  # serialisable for a server's response_format


def test_schema_valid_documents_pass_validation() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads(dump(mc_items(6)))
    jsonschema.validate(doc, json_schema("mc", CFG))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(dump(mc_items(5))), json_schema("mc", CFG))


def test_fewshot_examples_pass_their_own_validation() -> None:
    fs = fewshot()
    for task in ins.TASKS:
        v = validate(task, json.dumps(fs["examples"][task]), fs["example_caption"], CFG)
        assert v.reason is None and v.repairs == [], (task, v)


def build_request(rid: str, caption: str, task: str, cfg: InstructSection, seed: int, attempt: int,
                  supports_chat: bool, prompt_mode: str = "auto") -> GenerationRequest:
    rows = InstructRows(cfg, seed, supports_chat, prompt_mode=prompt_mode)  # type: ignore[arg-type]
    return rows.build_request({"id": rid, "caption": caption, "task": task}, attempt)


def test_build_request_modes_and_seeds() -> None:
    chat = build_request("row-1", "A cat {max_items} on a mat.", "qa", CFG, 7, 0, supports_chat=True)
    assert chat.messages is not None and chat.prompt is None
    content = chat.messages[0]["content"]
    assert "between 6 and 8" in content and content.rstrip().endswith("A cat {max_items} on a mat.")
    assert '{"QA Pairs": [{"Question": "...", "Answer": "..."}]}' in content  # literal braces survive
    assert chat.json_schema == json_schema("qa", CFG)

    comp = build_request("row-1", "A cat\non a mat.", "mc", CFG, seed=7, attempt=0, supports_chat=False)
    assert comp.prompt is not None and comp.messages is None
    assert comp.prompt.endswith("Description: A cat on a mat.\nJSON: ")
    assert comp.stop == ("\nDescription:",)

    prefill = build_request("r", "x", "mc", InstructSection(constrained=False), 7, 0, supports_chat=False)
    assert prefill.json_schema is None and prefill.prompt is not None
    assert prefill.prompt.endswith('JSON: {"QA Pairs": [')

    again = build_request("row-1", "A cat\non a mat.", "mc", CFG, seed=7, attempt=0, supports_chat=False)
    assert again.seed == comp.seed
    assert build_request("row-1", "c", "mc", CFG, 7, 1, False).seed != comp.seed
    assert build_request("row-2", "c", "mc", CFG, 7, 0, False).seed != comp.seed
    assert row_seed(7, "row-1", 0, stream="instruct") == comp.seed  # stable across processes: sha256-based

    with pytest.raises(ValueError, match="chat"):
        build_request("r", "x", "mc", CFG, 0, 0, supports_chat=False, prompt_mode="chat")


def test_per_row_validate_matches_the_batch() -> None:
    ops = InstructRows(CFG, 3, supports_chat=True)
    row = {"id": "r", "caption": CAPTION, "task": "mc"}
    value, reason, notes = ops.validate(row, GenerationResult(text=dump(mc_items(9)), n_tokens=1))
    assert reason is None and notes == ["truncated_items"] and value == to_conversations("mc", mc_items(8))
    assert ops.validate(row, GenerationResult(text="junk", n_tokens=1))[:2] == (None, "bad_json")


# --------------------------------------------------------------------------- task selection


def test_select_tasks_absolute_counts_and_determinism() -> None:
    ids = [f"cap-{i:04d}" for i in range(1000)]
    mix = {"mc": 171, "qa": 199, "reasoning": 100}
    a = select_tasks(ids, mix, seed=3)
    assert Counter(a.values()) == {"mc": 171, "qa": 199, "reasoning": 100}
    assert a == select_tasks(list(reversed(ids)), dict(reversed(list(mix.items()))), seed=3)
    assert a != select_tasks(ids, mix, seed=4)
    assert set(a) <= set(ids)


def test_select_tasks_fractions_and_scaling() -> None:
    ids = [str(i) for i in range(10)]
    assert Counter(select_tasks(ids, {"mc": 0.5, "qa": 0.3}, seed=0).values()) == {"mc": 5, "qa": 3}
    with pytest.warns(UserWarning, match="scaling"):
        got = select_tasks(ids, {"mc": 171000, "qa": 199000, "reasoning": 100000}, seed=0)
    c = Counter(got.values())
    assert sum(c.values()) == 10 and c["qa"] >= c["mc"] >= c["reasoning"] >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_tasks(ids, {"mc": 10}, seed=0)  # exactly all: no warning
    with pytest.raises(ValueError, match="unknown task"):
        select_tasks(ids, {"caption": 1}, seed=0)
    with pytest.raises(ValueError, match="duplicate"):
        select_tasks(["a", "a"], {"mc": 1}, seed=0)


# --------------------------------------------------------------------------- the batched stage


class ScriptedBackend:
    """Returns queued texts per row id, in order; records every generate call."""

    def __init__(self, script: dict[str, list[str]], supports_chat: bool = True) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.supports_chat = supports_chat
        self.calls: list[list[GenerationRequest]] = []

    def describe(self) -> dict[str, Any]:
        return {"backend": "scripted"}

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        self.calls.append(list(requests))
        texts = [self.script[r.key].pop(0) for r in requests]
        return [GenerationResult(text=t, n_tokens=len(t.split())) for t in texts]


def generate_instructions(batch: dict[str, list], *, backend: Any, cfg: InstructSection, seed: int) -> dict[str, list]:
    """One shard of Stage 2 through the generation engine, as the build runs it: the part's columns."""
    stage = InstructStage(dataclasses.replace(cfg, mix={"mc": 1}), build_seed=seed, model_id="m")
    stage.rows = InstructRows(cfg, seed, backend.supports_chat)
    parts: list[dict[str, list]] = []
    Engine(backend).run([stage.work_unit(0, batch)],
                        lambda unit, outcomes: parts.append(stage.part_table(batch, outcomes).to_pydict()))
    return parts[0]


def test_generate_retries_then_succeeds_and_rejects_after_max_attempts() -> None:
    good_mc, good_qa = dump(mc_items()), dump(qa_items())
    bad = dump(mc_items(3))
    backend = ScriptedBackend(
        {
            "ok": [good_mc],
            "retry": ['{"QA Pairs": [', good_qa],
            "never": [bad, bad, "not json"],
            "blank": [],
        }
    )
    batch = {
        "id": ["ok", "retry", "never", "blank"],
        "caption": [CAPTION, CAPTION, CAPTION, "   "],
        "task": ["mc", "qa", "mc", "qa"],
    }
    out = generate_instructions(batch, backend=backend, cfg=CFG, seed=1)

    assert out["id"] == batch["id"] and out["caption"] == batch["caption"]  # input columns kept
    assert out["attempts"] == [1, 2, 3, 0]
    assert out["reject_reason"] == [None, None, "bad_json", "empty_caption"]
    assert out["conversations"][0][1] == {"from": "gpt", "value": "B"}
    assert out["conversations"][1][0]["value"].startswith("<image>\n")
    assert out["conversations"][2] is None and out["conversations"][3] is None
    assert out["raw_output"][:3] == [good_mc, good_qa, "not json"]
    assert out["n_tokens"][2] == 2 * len(bad.split()) + 2
    # a failed row is retried at once (its retry goes with the next call), with a fresh seed each attempt
    rounds = [sorted(r.key for r in call) for call in backend.calls]
    assert rounds == [["never", "ok", "retry"], ["never", "retry"], ["never"]]
    seeds = [r.seed for call in backend.calls for r in call if r.key == "never"]
    assert len(set(seeds)) == 3
    # honest accounting: every row is either data or a recorded rejection
    n = len(batch["id"])
    kept = sum(c is not None for c in out["conversations"])
    rejected = sum(r is not None for r in out["reject_reason"])
    assert kept + rejected == n and kept == 2


def test_generate_is_deterministic_and_raw_output_revalidates() -> None:
    script = {"a": ["junk", dump(qa_items())], "b": [dump(mc_items(9))]}
    batch = {"id": ["a", "b"], "caption": [CAPTION, CAPTION], "task": ["qa", "mc"]}
    out1 = generate_instructions(batch, backend=ScriptedBackend(script), cfg=CFG, seed=5)
    out2 = generate_instructions(batch, backend=ScriptedBackend(script), cfg=CFG, seed=5)
    assert out1 == out2
    assert out1["repairs"][1] == ["truncated_items"]
    for i, task in enumerate(batch["task"]):  # the stored raw output is enough to validate again
        v = validate(task, out1["raw_output"][i], CAPTION, CFG)
        assert to_conversations(task, v.items or []) == out1["conversations"][i]
    # stricter rules applied later, without regenerating
    strict = InstructSection(truncate_extra_items=False)
    assert validate("mc", out1["raw_output"][1], CAPTION, strict).reason == "too_many_items"


def test_completion_mode_prefill_is_part_of_raw_output() -> None:
    cfg = InstructSection(constrained=False)
    text = dump(mc_items())[len(ins.JSON_OPENING) :] + "\n\nDescription: next"
    backend = ScriptedBackend({"x": [text]}, supports_chat=False)
    batch = {"id": ["x"], "caption": [CAPTION], "task": ["mc"]}
    out = generate_instructions(batch, backend=backend, cfg=cfg, seed=0)
    assert out["reject_reason"] == [None]
    assert out["raw_output"][0].startswith(ins.JSON_OPENING)
    assert "ignored_trailing_text" in out["repairs"][0]
    v = validate("mc", out["raw_output"][0], CAPTION, cfg)
    assert to_conversations("mc", v.items or []) == out["conversations"][0]


def test_bad_task_value_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown task 'vqa'"):
        generate_instructions(
            {"id": ["r1"], "caption": ["c"], "task": ["vqa"]}, backend=ScriptedBackend({}), cfg=CFG, seed=0
        )


def test_answer_cut_by_max_length_is_trimmed_to_whole_sentences_or_rejected() -> None:
    cfg = InstructSection(items={"qa": (1, 2)}, max_chars=60)
    cut = "The woman holds a red book. She is standing near the window and"
    assert len(cut) >= 59
    said = "A woman with a red book stands by a window."
    raw = json.dumps({"QA Pairs": [{"Question": "What does she hold?", "Answer": cut[:60]}]})
    v = validate("qa", raw, said, cfg)
    assert v.items is not None and v.items[0]["Answer"] == "The woman holds a red book."
    assert "trimmed_cut_off_answer" in v.repairs
    no_sentence = "a" * 60
    raw = json.dumps({"QA Pairs": [{"Question": "What?", "Answer": no_sentence}]})
    assert validate("qa", raw, said, cfg).reason == "answer_cut_off"
    short = json.dumps({"QA Pairs": [{"Question": "What?", "Answer": "A red book"}]})
    assert validate("qa", short, said, cfg).items[0]["Answer"] == "A red book"  # not at the limit: untouched


# --------------------------------------------------------------------------- item drops (issue 10)


class BagOfWordsEncoder:
    """Deterministic stand-in for the sentence encoder: normalised word counts over a hashed vocabulary."""

    def encode_text(self, texts: list[str], batch_size: int = 64) -> Any:
        import numpy as np

        from unicorn_datasets.text.tokens import words

        out = np.zeros((len(texts), 512), np.float32)
        for i, t in enumerate(texts):
            for w in words(t):
                out[i, int(row_seed(0, w)) % 512] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_duplicate_question_is_dropped_and_the_row_kept_when_enough_remain() -> None:
    cfg = InstructSection(items={"mc": (5, 8)})
    items = [*mc_items(5), mc_item(q="question number 0 about the image.")]
    v = validate("mc", dump(items), CAPTION, cfg)
    assert v.reason is None and len(v.items or []) == 5 and "dropped_duplicate_question" in v.repairs
    assert validate("mc", dump(items), CAPTION, CFG).reason == "duplicate_questions"  # 5 < min 6


@pytest.mark.parametrize(
    "options",
    [
        {"A": "Red", "B": "red.", "C": "Green", "D": "Black"},  # equal after normalising
        {"A": "Red", "B": "Dark red", "C": "Green", "D": "Black"},  # one inside the other
    ],
)
def test_same_meaning_options_drop_the_item(options: dict[str, str]) -> None:
    cfg = InstructSection(items={"mc": (5, 8)})
    v = validate("mc", dump([*mc_items(5), mc_item(q="Which color?", Options=options)]), CAPTION, cfg)
    assert v.reason is None and len(v.items or []) == 5 and v.repairs == ["dropped_synonym_options"]


def test_embedding_checks_drop_synonym_options_and_unsupported_answers() -> None:
    enc = BagOfWordsEncoder()
    cfg = InstructSection(items={"mc": (1, 3)}, min_answer_support_margin=0.0, max_option_similarity=0.8)
    good = mc_item(q="What color is the umbrella?", answer="B")  # B = Red: the caption says red umbrella
    wrong = mc_item(q="Which color does the umbrella have?", answer="A")  # A = Blue: not what the caption says
    alike = mc_item(q="Where is the dog?", Options={"A": "on the park bench", "B": "the park bench on",
                                                    "C": "In a car", "D": "Under a table"}, answer="A")
    v = validate("mc", dump([good, wrong, alike]), CAPTION, cfg, encoder=enc)
    assert v.reason is None and v.items == [good]
    assert v.repairs == ["dropped_unsupported_answer", "dropped_synonym_options"]
    assert validate("mc", dump([wrong]), CAPTION, cfg, encoder=enc).reason == "answer_not_supported"
    # without an encoder the embedding checks are off
    assert validate("mc", dump([wrong]), CAPTION, cfg).reason is None


# --------------------------------------------------------------------------- top-up (issue 9)


def test_topup_gives_an_empty_task_unused_captions_within_the_budget() -> None:
    ids = [f"c{i}" for i in range(10)]
    first = {"c0": "mc", "c1": "mc", "c2": "qa"}
    done = [("c0", "mc", False), ("c1", "mc", False), ("c2", "qa", True)]
    extra = ins.topup_inputs(ids, done, ["mc", "qa"], first, seed=1, budget=3)
    assert len(extra) == 2 and set(extra.values()) == {"mc"} and not set(extra) & set(first)
    assert extra == ins.topup_inputs(ids, done, ["mc", "qa"], first, seed=1, budget=3)  # deterministic
    assert extra != ins.topup_inputs(ids, done, ["mc", "qa"], first, seed=2, budget=3)  # from the seed
    # second round: one caption of budget left, then none
    done2 = done + [(i, "mc", False) for i in extra]
    assert len(ins.topup_inputs(ids, done2, ["mc", "qa"], first, seed=1, budget=3)) == 1
    assert ins.topup_inputs(ids, done2, ["mc", "qa"], first, seed=1, budget=2) == {}
    # a task with rows, or no budget, needs no round
    assert ins.topup_inputs(ids, [*done, ("c3", "mc", True)], ["mc", "qa"], first, 1, 9) == {}
    assert ins.topup_inputs(ids, done, ["mc", "qa"], first, seed=1, budget=0) == {}


def test_per_task_max_chars_from_the_recipe() -> None:
    from unicorn_datasets.recipe import load_recipe

    recipe = load_recipe("demo", {"instruct.max_chars": {"mc": 120, "reasoning": 600},
                                  "instruct.min_answer_support_margin": -0.05, "instruct.topup_budget": 8})
    cfg = recipe.instruct
    assert json_schema("mc", cfg)["properties"]["QA Pairs"]["items"]["properties"]["Question"]["maxLength"] == 120
    assert json_schema("reasoning", cfg)["properties"]["QA Pairs"]["items"]["properties"]["Answer"]["maxLength"] == 600
    assert cfg.chars("qa") == 2000 and cfg.needs_encoder and cfg.topup_budget == 8
    with pytest.raises(ValueError, match="unknown task"):
        InstructSection(max_chars={"vqa": 10})


def test_a_question_copied_from_the_fewshot_example_is_dropped() -> None:
    """Seen in a real Gemma demo row: a heron caption got the example's boat-and-dock questions."""
    example = fewshot()["examples"]["reasoning"]["QA Pairs"]
    copied = {"Question": example[1]["Question"], "Answer": "Step 1: The heron waits. Conclusion: it would fly away."}
    own = [{"Question": "Why is the dog calm?", "Answer": "Step 1: It rests on the bench. Conclusion: it is calm."},
           {"Question": "Will it rain soon?", "Answer": "Step 1: The sky is overcast. Conclusion: rain may come."}]
    cfg = InstructSection(items={"reasoning": (2, 3)})
    v = validate("reasoning", dump([copied, *own]), CAPTION, cfg)
    assert v.reason is None and v.items == own and v.repairs == ["dropped_copied_example"]
    assert validate("reasoning", dump([copied, own[0]]), CAPTION, cfg).reason == "copied_example"
    # the same question about a picture that does show the boat and the dock is the caption's own
    assert validate("reasoning", dump([copied, own[0]]), fewshot()["example_caption"], cfg).reason is None
    # 0 turns the check off
    off = InstructSection(items={"reasoning": (2, 3)}, max_example_overlap=0.0)
    assert validate("reasoning", dump([copied, own[0]]), CAPTION, off).reason is None
