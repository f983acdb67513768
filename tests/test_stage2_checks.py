"""Stage 2's model-free item checks on the defects seen in real demo rows (issue 19), and the MC option format
("A." / "A:") through conversations, the contract and the export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicorn_datasets.dataset.contract import check_row
from unicorn_datasets.generation.base import GenerationResult
from unicorn_datasets.recipe import InstructSection, load_recipe
from unicorn_datasets.stages.instruct import InstructRows, to_conversations, validate
from unicorn_datasets.stages.instruct.checks import (
    copies_example,
    malformed_question,
    off_question_answer,
    repeated_answer,
    ungrounded_answer,
    unsupported_options,
)

KINGFISHER = (
    "A kingfisher perches on a thin branch that hangs over a slow stream, its long sharp beak pointed at the "
    "water below. Reeds and tall grass line the muddy bank, and sunlight filters through the leaves of a willow."
)
# the demo's MC row: the few-shot example's options, none of which this caption says
COPIED = {"Question": "What color is the kingfisher?",
          "Options": {"A": "Blue", "B": "Red", "C": "Green", "D": "White"}, "Answer": "A"}
OWN = [
    {"Question": "Where is the kingfisher perched?",
     "Options": {"A": "On a branch over the stream", "B": "On a rooftop", "C": "In a cage", "D": "On the sand"},
     "Answer": "A"},
    {"Question": "What lines the bank of the stream?",
     "Options": {"A": "Parked cars", "B": "Reeds and tall grass", "C": "Snow", "D": "A brick wall"},
     "Answer": "B"},
]
MC = InstructSection(items={"mc": (2, 3)})


def dump(items: list[dict[str, Any]]) -> str:
    return json.dumps({"QA Pairs": items})


def rows_for(mode: str) -> InstructRows:
    cfg = InstructSection(items={"mc": (2, 3), "qa": (1, 3), "reasoning": (1, 2)})
    return InstructRows(cfg, seed=0, supports_chat=mode == "chat", prompt_mode=mode)  # type: ignore[arg-type]


def test_the_kingfisher_row_is_rejected_as_copied_from_the_example() -> None:
    v = validate("mc", dump([COPIED, OWN[0]]), KINGFISHER, MC)
    assert v.items is None and v.reason == "copied_example"
    # with enough items of its own the row is kept and the copy is dropped
    v = validate("mc", dump([COPIED, *OWN]), KINGFISHER, MC)
    assert v.items == OWN and v.repairs == ["dropped_copied_example"]
    # the same options about a caption that says one of them ask about this picture: not a copy
    red = KINGFISHER.replace("A kingfisher", "A kingfisher with a red breast")
    assert not copies_example(COPIED, red, 0.6)


def test_the_copy_check_runs_only_where_the_example_is_in_the_prompt() -> None:
    """Chat prompts show no example: an innocent overlap with it (shadows across the water, at a pond) is kept."""
    pond = ("Tall pine trees stand around a small pond in a quiet park. The low sun lights the treetops, and "
            "their reflections lie on the still surface of the pond.")
    shadows = {"Question": "Why do the trees cast long shadows across the water?",
               "Answer": "The sun is low, so the light comes in at a shallow angle and stretches them out."}
    where = {"Question": "Where are the trees?", "Answer": "They ring a little pond in the park."}
    result = GenerationResult(text=dump([shadows, where]), n_tokens=10)
    row = {"id": "p", "caption": pond, "task": "qa"}
    convs, reason, repairs = rows_for("chat").validate(row, result)
    assert reason is None and len(convs) == 4 and "dropped_copied_example" not in repairs
    convs, reason, repairs = rows_for("completion").validate(row, result)
    assert reason is None and len(convs) == 2 and "dropped_copied_example" in repairs
    # the kingfisher row: rejected in completion mode, where the example was shown
    row = {"id": "k", "caption": KINGFISHER, "task": "mc"}
    kingfisher = GenerationResult(text=dump([COPIED, OWN[0]]), n_tokens=10)
    assert rows_for("completion").validate(row, kingfisher)[1] == "copied_example"


@pytest.mark.parametrize(("question", "bad"), [
    ("What is the kingfisher doing?", False),
    ("Describe the bank of the stream.", False),
    ("How many birds are in the image", False),  # interrogative, only the "?" missing
    ("Why might the bird wait here? (Hint: fish swim in slow water, so the answer is", True),
    ("Which of the following best describes the", True),  # cut off
    ("The kingfisher sits on a branch.", True),  # a statement, not a question
])
def test_malformed_questions(question: str, bad: bool) -> None:
    assert malformed_question(question, 120) is bad


@pytest.mark.parametrize(("question", "answer", "bad"), [
    ("What is the size of the bird?", "It is a brown pelican.", True),
    ("What is the size of the bird?", "It is small, about the length of a hand.", False),
    ("How many birds are there?", "A kingfisher.", True),
    ("How many birds are there?", "Just one.", False),
    ("What color is the water?", "It flows slowly past the reeds.", True),
    ("What color is the water?", "Dark green and murky.", False),
    ("Where is the bird?", "On a thin branch above the stream.", False),
    ("What is the bird doing?", "Watching the water for fish.", False),  # no kind asked: never flagged
])
def test_answers_that_do_not_answer_their_question(question: str, answer: str, bad: bool) -> None:
    assert off_question_answer(question, answer) is bad


def test_off_question_and_malformed_items_are_dropped_with_their_reasons() -> None:
    cfg = InstructSection(items={"qa": (1, 3)})
    good = {"Question": "Where is the kingfisher?", "Answer": "On a branch over the stream."}
    off = {"Question": "What is the size of the bird?", "Answer": "It is a brown pelican."}
    cut = {"Question": "Why is the bird so still? (Hint: it hunts fish, so the answer is", "Answer": "It hunts."}
    v = validate("qa", dump([off, cut, good]), KINGFISHER, cfg)
    assert v.items == [good] and v.repairs == ["dropped_off_question_answer", "dropped_malformed_question"]
    assert validate("qa", dump([off]), KINGFISHER, cfg).reason == "off_question_answer"
    assert validate("qa", dump([cut]), KINGFISHER, cfg).reason == "malformed_question"
    # the recipe key turns them off
    none = InstructSection(items={"qa": (1, 3)}, item_checks=())
    assert validate("qa", dump([off, cut]), KINGFISHER, none).reason is None


PELICAN = ("A brown pelican sits on a branch as it looks out to sea. Its beak is open, and the bottom part of its "
           "bill resembles an octopus's tentacles. It has two legs, and the shape of its shell is similar to that of "
           "a crab.")
# the demo's QA row (issue 19's closing note): three near-identical answers, none from the caption
LOOPING = [
    {"Question": "What is the bird's favorite place to eat?",
     "Answer": "It is a favorite place to eat because it is a place where it can easily reach its food. It is also a "
               "place where it can easily hide its food from predators."},
    {"Question": "What do you think the bird's favorite food is?",
     "Answer": "It is a favorite food because it is a place where it can easily reach its food. It is also a place "
               "where it can hide its food from predators."},
    {"Question": "Why do you think the bird's favorite food is?",
     "Answer": "It is a favorite food because it is a place where it can easily reach its food. It is also a place "
               "where it can hide its food from predators."},
]


def test_the_looping_pelican_row_is_rejected() -> None:
    cfg = InstructSection(items={"qa": (2, 3)})
    v = validate("qa", dump(LOOPING), PELICAN, cfg)
    assert v.items is None and v.reason == "ungrounded_answer"
    # each check on its own rejects it too, with its own reason
    only_repeats = InstructSection(items={"qa": (2, 3)}, item_checks=("repeated_answer",))
    v = validate("qa", dump(LOOPING), PELICAN, only_repeats)
    assert v.reason == "repeated_answer" and v.repairs == ["dropped_repeated_answer"]
    # answers of its own, from the caption, pass
    own = [{"Question": "What is the pelican sitting on?", "Answer": "A branch, looking out to sea."},
           {"Question": "Is its beak open or closed?", "Answer": "Open, with the lower part of the bill showing."}]
    assert validate("qa", dump(own), PELICAN, cfg).items == own


@pytest.mark.parametrize(("question", "answer", "bad"), [
    ("What is the teacher's main point of view?", "The teacher is trying to explain the Earth's magnetic field.", True),
    ("What is the pelican looking at?", "The sea, with its beak open.", False),
    ("Is the pelican's beak open?", "Yes.", False),  # one word of its own: too little to judge
    ("How many legs does it have?", "Two.", False),
    ("What does the bill look like?", "Its lower part looks like an octopus's tentacles.", False),
    ("Where is the pelican?", "On the roof of a red barn next to a tractor.", True),
])
def test_answers_that_do_not_come_from_the_caption(question: str, answer: str, bad: bool) -> None:
    assert ungrounded_answer(question, answer, PELICAN) is bad


def test_repeated_answers_but_not_short_equal_ones() -> None:
    assert repeated_answer(LOOPING[2]["Answer"], [LOOPING[0]["Answer"]])
    assert not repeated_answer("Two.", ["Two."])  # "how many legs" and "how many birds" may both be two
    assert not repeated_answer("The pelican sits on a branch above the sea.",
                               ["Its bill is open and looks like tentacles."])


def test_mc_items_whose_options_the_caption_never_says() -> None:
    made_up = {"Question": "What is the kingfisher holding?",
               "Options": {"A": "A fish", "B": "A leaf", "C": "A twig", "D": "A feather"}, "Answer": "A"}
    assert unsupported_options(made_up["Question"], made_up["Options"], KINGFISHER)
    assert not any(unsupported_options(it["Question"], it["Options"], KINGFISHER) for it in OWN)
    # support is local: "green" said of the chalkboard is no colour of the map (a real demo item)
    room = ("A classroom with rows of wooden desks facing a green chalkboard. A teacher in a blue sweater points "
            "at a map of Europe pinned beside the board.")
    colours = {"A": "Green", "B": "Yellow", "C": "Red", "D": "White"}
    assert unsupported_options("What color is the map?", colours, room)
    assert not unsupported_options("What color is the chalkboard?", colours, room)
    v = validate("mc", dump([made_up, OWN[0]]), KINGFISHER, MC)
    assert v.reason == "unsupported_options"


def test_option_format_a_colon_end_to_end(tmp_path: Path) -> None:
    """"A:" (the authors' released data): conversations, the contract, and the export (rewrite both ways)."""
    from unicorn_datasets.dataset.export import export_bunny

    recipe = load_recipe("demo", {"instruct.option_format": "A:"})
    convs, reason, _ = InstructRows(recipe.instruct, seed=0, supports_chat=False, prompt_mode="completion").validate(
        {"id": "k", "caption": KINGFISHER, "task": "mc"}, GenerationResult(text=dump(OWN), n_tokens=1))
    assert reason is None
    assert convs[0]["value"].split("\n")[2:] == ["A: On a branch over the stream", "B: On a rooftop",
                                                  "C: In a cage", "D: On the sand"]
    row = {"id": "k", "task": "mc", "conversations": convs, "embedding": [0.1, 0.2]}
    assert check_row("instruct", row, dim=2) == []
    dotted = to_conversations("mc", OWN)  # the default, "A."
    assert check_row("instruct", {**row, "conversations": dotted}, dim=2) == []
    mixed = [{**dotted[0], "value": dotted[0]["value"].replace("B. ", "B: ")}, *dotted[1:]]
    assert {v.rule for v in check_row("instruct", {**row, "conversations": mixed}, dim=2)} == {"option_format"}
    with pytest.raises(ValueError, match="option_format"):
        load_recipe("demo", {"instruct.option_format": "A)"})

    out = tmp_path / "ds"
    (out / "instruct").mkdir(parents=True)
    conv_type = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    table = pa.table({"id": ["k", "d"], "task": ["mc", "mc"], "caption": [KINGFISHER, KINGFISHER],
                      "conversations": pa.array([convs, dotted], conv_type),
                      "embedding": pa.array([[0.1, 0.2], [0.3, 0.4]], pa.list_(pa.float32(), 2))})
    pq.write_table(table, out / "instruct" / "train-00000-of-00001.parquet")
    (out / "README.md").write_text("---\nconfigs:\n- config_name: instruct\n  data_files:\n  - split: train\n"
                                   "    path: instruct/train-*.parquet\n---\n")
    for fmt, want in ((None, ["A: ", "A. "]), ("A:", ["A: ", "A: "]), ("A.", ["A. ", "A. "])):
        to = tmp_path / f"bunny{fmt}"
        export_bunny(out, to, configs=["instruct"], cache_dir=str(tmp_path / "cache"), allow_dim_mismatch=True,
                     option_format=fmt)
        records = json.loads((to / "instruct.json").read_text())
        assert [r["conversations"][0]["value"].split("\n")[2][:3] for r in records] == want
        assert [r["conversations"][1]["value"] for r in records] == ["A", "A"]
