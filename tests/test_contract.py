"""The conversation contract: one hand-made bad row per rule, and the build/export refusing to write one."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unicorn_datasets.dataset.contract import RULES, ContractViolation, assert_rows, assert_table, check_row
from unicorn_datasets.dataset.repo import BuildRepo

MC_HUMAN = "What is on the bench?\nA. a dog\nB. a cat\nC. a bird\nD. a fox"


def _row(**kw):
    row = {
        "id": "r1",
        "task": "mc",
        "conversations": [{"from": "human", "value": f"<image>\n{MC_HUMAN}"}, {"from": "gpt", "value": "B"}],
        "embedding": [0.1, 0.2, 0.3],
    }
    return {**row, **kw}


def _turns(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


BAD_ROWS = {
    "image_placeholder_count": _row(
        task="qa", conversations=_turns(("human", "<image>\nWhat?"), ("gpt", "A <image> of a dog."))
    ),
    "image_placeholder_position": _row(task="qa", conversations=_turns(("human", "What? <image>"), ("gpt", "A dog."))),
    "turn_order": _row(task="qa", conversations=_turns(("human", "<image>\nWhat?"), ("human", "And?"))),
    "empty_turn": _row(task="qa", conversations=_turns(("human", "<image>\nWhat?"), ("gpt", "  "))),
    "reserved_token": _row(task="qa", conversations=_turns(("human", "<image>\nWhat?"), ("gpt", "A dog<|im_end|>"))),
    "mc_answer": _row(conversations=_turns(("human", f"<image>\n{MC_HUMAN}"), ("gpt", "E"))),
    "option_format": _row(conversations=_turns(("human", "<image>\n" + MC_HUMAN.replace("B. ", "B: ")),
                                               ("gpt", "B"))),
    "embedding_length": _row(embedding=[0.1, 0.2]),
    "embedding_not_finite": _row(embedding=[0.1, math.nan, 0.3]),
}


def test_a_good_row_passes() -> None:
    assert check_row("instruct", _row(), dim=3) == []
    assert check_row("pretrain", _row(task=None, conversations=_turns(("human", "<image>\nDescribe."),
                                                                     ("gpt", "A dog."))), dim=3) == []
    assert check_row("captions", {"id": "c", "caption": "A dog on a bench."}) == []


@pytest.mark.parametrize("rule", sorted(BAD_ROWS))
def test_each_rule_catches_its_bad_row(rule: str) -> None:
    rules = {v.rule for v in check_row("instruct", BAD_ROWS[rule], dim=3)}
    assert rule in rules
    with pytest.raises(ContractViolation, match=rf"'r1'.*{rule}"):
        assert_rows("instruct", [BAD_ROWS[rule]], dim=3)


def test_more_bad_shapes() -> None:
    mc_sentence = _row(conversations=_turns(("human", f"<image>\n{MC_HUMAN}"), ("gpt", "B. a cat")))
    assert "mc_answer" in {v.rule for v in check_row("instruct", mc_sentence)}
    gpt_first = _row(task="qa", conversations=_turns(("gpt", "<image>\nHi"), ("human", "Hello")))
    assert {"turn_order", "image_placeholder_position"} <= {v.rule for v in check_row("instruct", gpt_first)}
    no_placeholder = _row(task="qa", conversations=_turns(("human", "What?"), ("gpt", "A dog.")))
    assert "image_placeholder_count" in {v.rule for v in check_row("instruct", no_placeholder)}
    only_placeholder = _row(task="qa", conversations=_turns(("human", "<image>\n"), ("gpt", "A dog.")))
    assert "empty_turn" in {v.rule for v in check_row("instruct", only_placeholder)}
    assert "turn_order" in {v.rule for v in check_row("instruct", _row(conversations=[]))}
    assert "embedding_not_finite" in {v.rule for v in check_row("pretrain", _row(embedding=[math.inf, 0, 0]))}
    assert {"empty_caption"} == {v.rule for v in check_row("captions", {"id": "c", "caption": ""})}
    assert {"reserved_token"} == {v.rule for v in check_row("captions", {"id": "c", "caption": "An <image> here."})}
    assert set(RULES) >= {v.rule for r in BAD_ROWS.values() for v in check_row("instruct", r, dim=3)}


def _table(rows, dim: int = 3) -> pa.Table:
    conv = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    return pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "task": pa.array([r["task"] for r in rows], pa.string()),
            "conversations": pa.array([r["conversations"] for r in rows], conv),
            "embedding": pa.array([r["embedding"] for r in rows], pa.list_(pa.float32(), dim)),
        }
    )


def test_table_check_names_the_bad_row_among_good_ones() -> None:
    good = [_row(id=f"g{i}") for i in range(5)]
    assert_table("instruct", _table(good), dim=3)
    bad = [*good, _row(id="nan-row", embedding=[0.0, math.nan, 1.0])]
    with pytest.raises(ContractViolation, match="'nan-row'.*embedding_not_finite"):
        assert_table("instruct", _table(bad), dim=3)
    with pytest.raises(ContractViolation, match="embedding_length"):
        assert_table("instruct", _table(good), dim=4)


def test_build_never_publishes_a_config_with_a_bad_row(tmp_path: Path) -> None:
    repo = BuildRepo(tmp_path / "out")
    good = _table([_row(id=f"g{i}") for i in range(3)])
    repo.write_config("instruct", iter([good]), good.schema)
    before = sorted(p.name for p in (tmp_path / "out" / "instruct").iterdir())
    bad = _table([_row(id="x", conversations=_turns(("human", "<image>\nQ?"), ("gpt", "<image> a dog")))])
    with pytest.raises(ContractViolation, match="'x'.*image_placeholder_count"):
        repo.write_config("instruct", iter([good, bad]), good.schema)
    # the earlier, good version of the config is still the published one
    assert sorted(p.name for p in (tmp_path / "out" / "instruct").iterdir()) == before
    assert pq.read_table(tmp_path / "out" / "instruct" / before[0]).num_rows == 3


def test_export_refuses_a_folder_with_a_bad_row(tmp_path: Path) -> None:
    from unicorn_datasets.dataset.export import export_bunny

    out = tmp_path / "ds"
    (out / "pretrain").mkdir(parents=True)
    conv = [_turns(("human", "<image>\nDescribe."), ("gpt", text)) for text in ("A dog.", "An <image> of a cat.")]
    table = pa.table({"id": ["a", "b"], "caption": ["A dog.", "A cat."], "conversations": conv,
                      "embedding": pa.array([[0.1, 0.2], [0.3, 0.4]], pa.list_(pa.float32(), 2))})
    pq.write_table(table, out / "pretrain" / "train-00000-of-00001.parquet")
    (out / "README.md").write_text("---\nconfigs:\n- config_name: pretrain\n  data_files:\n  - split: train\n"
                                   "    path: pretrain/train-*.parquet\n---\n")
    # own cache: `datasets` may have read HF_DATASETS_CACHE before the test fixture set it
    with pytest.raises(ContractViolation, match="'b' breaks the conversation contract .image_placeholder_count"):
        export_bunny(out, tmp_path / "bunny", configs=["pretrain"], cache_dir=str(tmp_path / "cache"),
                     allow_dim_mismatch=True)
    assert not any((tmp_path / "bunny").glob("pretrain*"))
