"""Text hygiene at every entrance (text.py) and reserved tokens (reserved.py): seeds as editors save them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicorn_datasets.recipe import CaptionsSection
from unicorn_datasets.seeds.sources import SeedStats, load_caption_seeds, load_domain_seeds, merge_and_limit
from unicorn_datasets.stages.captions import check
from unicorn_datasets.text.hygiene import TextChanges, TextError, clean, read_lines
from unicorn_datasets.text.reserved import ReservedTokens, escape_seed, find_reserved, tokenizer_tokens


def _load(path: Path, **kw) -> tuple[list[str], SeedStats]:
    stats = SeedStats()
    return [s.seed for s in load_caption_seeds(str(path), stats=stats, **kw)], stats


def test_bom_and_crlf_never_hide_a_duplicate(tmp_path: Path) -> None:
    """The issue's case: a UTF-8 signature and Windows line endings; the first seed duplicates a later one."""
    p = tmp_path / "seeds.txt"
    p.write_bytes(b"\xef\xbb\xbfA dog on a beach.\r\nA cat on a mat.\r\nA dog on a beach.\r\n")
    seeds, stats = _load(p)
    assert seeds == ["A dog on a beach.", "A cat on a mat."]
    assert stats.duplicates == 1 and stats.bom_removed == 1 and stats.crlf_normalised == 3
    assert stats.read == 3 and stats.empty == 0  # the final line ending is not an extra blank line


def test_invisible_and_unnormalised_text_is_cleaned_and_counted(tmp_path: Path) -> None:
    p = tmp_path / "seeds.txt"
    lines = [
        "A cafe\u0301 with tables outside.",  # decomposed é: NFC changes it
        "A caf\u00e9 with tables outside.",  # the same seed, composed: a duplicate after NFC
        "A red\u200b car\u2060 parked.",  # zero-width characters
        "A bell\x07 on a\x1b door.",  # control characters
        "A\tbird \u00a0 on   a wire.",  # whitespace runs, tab, no-break space
    ]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    seeds, stats = _load(p)
    assert seeds == ["A caf\u00e9 with tables outside.", "A red car parked.", "A bell on a door.", "A bird on a wire."]
    assert (stats.nfc_changed, stats.zero_width_removed, stats.control_removed) == (1, 1, 1)
    assert stats.whitespace_collapsed == 1 and stats.duplicates == 1


@pytest.mark.parametrize("codec", ["utf-16", "utf-32"])
def test_utf16_and_utf32_with_a_signature_are_read(tmp_path: Path, codec: str) -> None:
    p = tmp_path / "seeds.csv"
    p.write_bytes("caption\r\nA dog on a beach.\r\nA cat on a mat.\r\n".encode(codec))  # Python writes the BOM
    seeds, stats = _load(p)
    assert seeds == ["A dog on a beach.", "A cat on a mat."]
    assert stats.bom_removed == 1 and stats.utf16_decoded == 1


def test_utf16_without_a_signature_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "seeds.txt"
    p.write_bytes("A dog on a beach.\n".encode("utf-16-le"))
    with pytest.raises(TextError, match=r"seeds.txt:1:2: NUL byte .*UTF-16"):
        read_lines(p, TextChanges())


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet", "dataset"])
def test_every_seed_format_is_cleaned_the_same_way(tmp_path: Path, fmt: str) -> None:
    texts = ["\ufeffA dog\u200b on a beach.", "A  dog on a beach.", "An <image> of a red car.", "A cat\r\non a mat."]
    p = tmp_path / f"seeds.{fmt}"
    if fmt == "jsonl":
        p.write_text("".join(json.dumps({"caption": t}) + "\n" for t in texts), encoding="utf-8")
    elif fmt in ("csv", "tsv"):
        import csv

        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
            w.writerow(["caption"])
            w.writerows([[t] for t in texts])
    elif fmt == "parquet":
        pq.write_table(pa.table({"caption": texts}), p)
    else:
        import datasets

        datasets.Dataset.from_dict({"caption": texts}).save_to_disk(str(p))
    seeds, stats = _load(p)
    assert seeds == ["A dog on a beach.", "An image of a red car.", "A cat on a mat."]
    assert stats.duplicates == 1 and stats.reserved_escaped == 1 and stats.zero_width_removed == 1


def test_domain_seeds_are_cleaned_too(tmp_path: Path) -> None:
    p = tmp_path / "domains.json"
    spec = {"domains": {"birds": {"templates": ["A photo of a {label}.", "A {label} <image> in flight."],
                                  "labels": ["robin\u200b", "blue jay"]}}}
    p.write_text(json.dumps(spec), encoding="utf-8")
    stats = SeedStats()
    seeds = [s.seed for s in load_domain_seeds(str(p), templates_per_label=2, stats=stats)]
    assert "A photo of a robin." in seeds and all("<image>" not in s and "\u200b" not in s for s in seeds)
    assert stats.zero_width_removed == 2 and stats.reserved_escaped == 2


def test_merging_sources_dedups_after_cleaning(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("A dog on a beach.\n", encoding="utf-8")
    b.write_bytes(b"\xef\xbb\xbfa DOG on a  beach.\r\n")
    groups = [load_caption_seeds(str(a)), load_caption_seeds(str(b))]
    assert len(merge_and_limit(groups, limit=None, seed=0)) == 1


def test_reserved_tokens_in_seeds_become_plain_words() -> None:
    assert escape_seed("An <image> of a dog<|im_end|> [INST] on grass</s>") == ("An image of a dog on grass", True)
    assert escape_seed("A <video> of <|image_pad|> rain") == ("A video of image rain", True)
    assert escape_seed("A dog on grass.") == ("A dog on grass.", False)
    assert escape_seed("x <|some_new_token|> y") == ("x y", True)  # any <|word|> is some family's special token
    assert find_reserved("A <start_of_turn>user and <eos>") == ["<start_of_turn>", "<eos>"]
    assert find_reserved("a < b and c > d, [x]") == []


def test_the_configured_models_own_special_tokens_are_reserved(tiny_llm: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    own = tokenizer_tokens(tok)
    assert "<image_soft_token>" in own
    reserved = ReservedTokens([*own, "<my_special>"])
    assert reserved.find("A dog <my_special> here") == ["<my_special>"]
    assert find_reserved("A dog <my_special> here") == []  # not a common token: only that model's


def test_stage1_rejects_a_caption_with_a_reserved_token() -> None:
    cfg = CaptionsSection(min_words=3)
    assert check("A dog sits on the grass in the sun.", cfg, "stop") is None
    assert check("An <image> of a dog on the grass in the sun.", cfg, "stop") == "reserved_token"
    assert check("A dog on the grass.<|im_end|>", cfg, "stop") == "reserved_token"


def test_clean_counts_each_kind_of_change_once_per_text() -> None:
    changes = TextChanges()
    assert clean("\ufeffA\r\nb\u200bc\x00d  e\u0301", changes) == "A bcd \u00e9"
    assert changes.as_dict() == {"bom_removed": 1, "utf16_decoded": 0, "crlf_normalised": 1, "nfc_changed": 1,
                                 "zero_width_removed": 1, "control_removed": 1, "whitespace_collapsed": 1}


def test_stage2_item_text_is_repaired_or_rejected_per_case() -> None:
    from unicorn_datasets.text.reserved import REASON, REPAIR, screen_item_text

    assert screen_item_text("What colour is the car?") == ("What colour is the car?", None)
    assert screen_item_text("What is in the <image>?") == ("What is in the image?", REPAIR)
    assert screen_item_text("A red car.<|im_end|>") == ("A red car.<|im_end|>", REASON)
    assert screen_item_text("<image> and <end_of_turn>")[1] == REASON


def test_the_card_lists_the_seed_cleaning_per_source(tmp_path: Path) -> None:
    from unicorn_datasets.dataset.card import seeds_table

    p = tmp_path / "seeds.txt"
    p.write_bytes(b"\xef\xbb\xbfA dog on a beach.\r\nA dog on a  beach.\r\n")
    stats = SeedStats()
    kept = load_caption_seeds(str(p), stats=stats)
    table = seeds_table({"selected": 1, str(p): {**stats.as_dict(), "kept": len(kept)}})
    assert f"| `{p}` | 2 | 1 | bom_removed: 1, crlf_normalised: 2, whitespace_collapsed: 1, duplicates: 1 |" in table
    assert "1 seeds selected" in table


def test_stage2_items_are_screened_in_place() -> None:
    from unicorn_datasets.text.reserved import REASON, REPAIR, screen_items

    items = [{"Question": "What is in the <image>?", "Options": {"A": "a <video> still", "B": "a dog"},
              "Answer": "B"}]
    repairs: list[str] = []
    assert screen_items(items, repairs) is None
    assert items[0]["Question"] == "What is in the image?" and items[0]["Options"]["A"] == "a video still"
    assert repairs == [REPAIR]
    assert screen_items([{"Question": "Why?", "Answer": "Because.<|eot_id|>"}], []) == REASON
    assert screen_items([{"Question": "Why?", "Answer": "Because."}], repairs := []) is None and repairs == []
