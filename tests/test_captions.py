"""Stage-1 caption checks: every rejection reason a user can meet, and the cleaning of cut-off text."""

from __future__ import annotations

import pytest

from unicorn_datasets.stages.captions import CaptionConfig, check, clean, seed_overlap

LONG = ("A brown pelican stands on a thick branch above calm water, its long bill resting against its neck. "
        "Grey feathers cover its back and the branch is dark and wet. Soft morning light comes from the left, "
        "and a line of green trees fills the background under a pale sky.")
SEED = "a brown pelican perched on a branch."


@pytest.fixture
def cfg() -> CaptionConfig:
    return CaptionConfig(min_words=20, max_words=80, min_seed_overlap=0.25, prompt_mode="completion")


def test_a_good_caption_passes(cfg: CaptionConfig) -> None:
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
def test_rejection_reasons(cfg: CaptionConfig, text: str, finish: str, reason: str) -> None:
    assert check(text, cfg, finish, SEED) == reason


def test_a_caption_about_something_else_has_drifted(cfg: CaptionConfig) -> None:
    assert seed_overlap("a tourist photo of the Empire State Building.", LONG) == 0.0
    assert check(LONG, cfg, "stop", "a tourist photo of the Empire State Building.") == "drifted_from_seed"
    assert seed_overlap("a photo of a shiny clarinet", "") == 0.0
    assert seed_overlap("a close-up photo", LONG) == 1.0  # nothing but phrasing words: nothing to drift from
    off = CaptionConfig(min_words=20, max_words=80, min_seed_overlap=0.0)
    assert check(LONG, off, "stop", "the Empire State Building") is None


def test_cut_off_text_is_trimmed_to_its_last_sentence() -> None:
    assert clean("One sentence here.  Two  sentences here. And a third that was cut", "length") == (
        "One sentence here. Two sentences here.")
    assert clean("no sentence end at all", "length") == ""
    assert clean("  spaced\n\ntext  ", "stop") == "spaced text"
