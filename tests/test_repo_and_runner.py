"""The dataset folder, the shard runner and config assembly, on files and rows (no subprocess, no model)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, load_dataset

from unicorn_datasets.dataset.rejections import write_rejections
from unicorn_datasets.dataset.repo import BuildRepo, RepoError
from unicorn_datasets.generation.base import GenerationRequest, GenerationResult, SamplingParams
from unicorn_datasets.generation.engine import RowOutcome, WorkUnit
from unicorn_datasets.pipeline.context import Context, make_state
from unicorn_datasets.pipeline.loop import rejection_inputs
from unicorn_datasets.pipeline.shards import Shards, run_generation, run_map
from unicorn_datasets.recipe import Recipe
from unicorn_datasets.stages.base import OUTCOME_FIELDS, outcome_columns
from unicorn_datasets.stages.captions import PART_SCHEMA, assemble_captions


# ---- the repository ----------------------------------------------------------------------------
def test_start_resume_and_refuse_other_settings(tmp_path: Path) -> None:
    repo = BuildRepo(tmp_path / "out")
    assert repo.start({"name": "r", "seed": 0}, "fp1", overwrite=False) is False
    assert repo.start({"name": "r", "seed": 0}, "fp1", overwrite=False) is True
    with pytest.raises(RepoError, match=r"seed: 0 -> 1"):
        repo.start({"name": "r", "seed": 1}, "fp2", overwrite=False)
    # a key the package that made the build did not have yet (its value None): named, not "none"
    older = BuildRepo(tmp_path / "older")
    older.start({"name": "r", "captions": {"min_words": 5}}, "fp3", overwrite=False)
    with pytest.raises(RepoError, match=r"first difference: captions.max_subjective: \(no such key\) -> None"):
        older.start({"name": "r", "captions": {"min_words": 5, "max_subjective": None}}, "fp4", overwrite=False)
    repo.write_part("captions", 0, pa.table({"id": ["a"]}), {"rows": 1})
    assert repo.start({"name": "r", "seed": 1}, "fp2", overwrite=True) is False
    assert repo.done_shards("captions") == set()  # --overwrite starts from nothing


def test_foreign_folder_and_file_are_never_touched(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(RepoError, match="not a unicorn-datasets build"):
        BuildRepo(tmp_path / "mine").check_target(overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(RepoError, match="not a folder"):
        BuildRepo(tmp_path / "f").check_target(overwrite=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"


def test_a_part_counts_only_once_complete(tmp_path: Path) -> None:
    repo = BuildRepo(tmp_path)
    d = repo.stage_dir("captions")
    (d / ".part-00003.parquet.tmp-123").write_bytes(b"half")  # a kill mid-write
    repo.write_part("captions", 1, pa.table({"id": ["a", "b"]}), {"rows": 2})
    assert repo.done_shards("captions") == {1}
    assert repo.remove_stale_tmp("captions") == 1 and not list(d.glob(".*tmp*"))
    size = repo.part_path("captions", 1).stat().st_size  # recorded so a rerun can check the part cheaply
    assert repo.part_meta("captions") == [{"rows": 2, "bytes": size}]


def test_config_files_load_and_an_empty_config_is_left_out(tmp_path: Path) -> None:
    repo = BuildRepo(tmp_path)
    schema = pa.schema([("id", pa.string()), ("caption", pa.string())])
    files = repo.write_config("captions", iter([pa.table({"id": ["a", "b"], "caption": ["x", "y"]}),
                                                pa.table({"id": ["c"], "caption": ["z"]})]), schema)
    assert files == ["captions/train-00000-of-00001.parquet"]
    assert load_dataset("parquet", data_files=str(tmp_path / files[0]), split="train")["id"] == ["a", "b", "c"]
    assert repo.write_config("instruct", iter([schema.empty_table()]), schema) == []
    assert not (tmp_path / "instruct").exists()


# ---- assembly ----------------------------------------------------------------------------------
def caption_part(ids: list[str], accepted: set[str]) -> pa.Table:
    outcomes = [RowOutcome(value=f"caption of {i}", attempts=1) if i in accepted
                else RowOutcome(reason="too_short", attempts=2, attempt_reasons=["too_short", "too_short"])
                for i in ids]
    cols = {"id": ids, "seed": [f"seed {i}" for i in ids], "source": ["s"] * len(ids),
            "domain": [None] * len(ids), "label": [None] * len(ids),
            "caption": [o.value for o in outcomes], "raw_output": ["raw"] * len(ids),
            "truncated": [False] * len(ids), **outcome_columns(outcomes)}
    return pa.Table.from_pydict(cols, schema=PART_SCHEMA)


def test_assembly_keeps_accepted_rows_and_records_every_rejection(tmp_path: Path) -> None:
    repo = BuildRepo(tmp_path)
    repo.write_part("captions", 0, caption_part(["a", "b", "c"], {"a", "c"}), {})
    repo.write_part("captions", 1, caption_part(["d", "e"], set()), {})  # a part with no accepted row
    summary = assemble_captions(repo, "model-x", "sha")
    write_rejections(repo, rejection_inputs())  # what the build loop does after a stage that rejects rows
    assert summary["rows_in"] == 5 and summary["rows_out"] == 2 and summary["rejected"] == {"too_short": 3}
    rows = load_dataset("parquet", data_files=str(tmp_path / summary["files"][0]), split="train")
    assert rows["id"] == ["a", "c"] and set(rows["model"]) == {"model-x"}
    rej = pq.read_table(tmp_path / "artifacts" / "rejections.parquet").to_pylist()
    assert sorted(r["id"] for r in rej) == ["b", "d", "e"] and {r["reason"] for r in rej} == {"too_short"}


# ---- the shard runner --------------------------------------------------------------------------
class CountingBackend:
    supports_chat = False
    batch_size = 2

    def __init__(self) -> None:
        self.sent: list[str] = []

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        self.sent += [r.key for r in requests]
        return [GenerationResult(text=f"text {r.key}", n_tokens=1) for r in requests]


class EchoStage:
    name = "captions"

    def work_unit(self, shard: int, rows: dict[str, list]) -> WorkUnit:
        ids = rows["id"]
        return WorkUnit(shard, list(ids), lambda i, a: GenerationRequest(key=ids[i], seed=a, prompt=ids[i]),
                        lambda i, res: (res.text, None, []) if ids[i] != "r3" else (None, "bad", []),
                        SamplingParams(), 2)

    def part_table(self, rows: dict[str, list], outcomes: list[RowOutcome]) -> pa.Table:
        cols = {"id": rows["id"], "caption": [o.value for o in outcomes], **outcome_columns(outcomes)}
        return pa.Table.from_pydict(cols, schema=ECHO_SCHEMA)


ECHO_SCHEMA = pa.schema([("id", pa.string()), ("caption", pa.string()), *OUTCOME_FIELDS])


@pytest.fixture(scope="module")
def state():
    return make_state()


def test_generation_runner_lands_one_part_per_shard_and_skips_them_on_rerun(tmp_path: Path, state) -> None:
    repo = BuildRepo(tmp_path)
    backend = CountingBackend()
    ctx = Context(Recipe(shard_size=3), repo, state, loaded_backend=backend)
    inputs = Shards.of(Dataset.from_dict({"id": [f"r{i}" for i in range(7)]}), 3)
    run_generation(ctx, EchoStage(), inputs)
    assert repo.done_shards("captions") == {0, 1, 2}
    rows = pa.concat_tables(repo.read_parts("captions")).to_pylist()
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(7)]
    r3 = next(r for r in rows if r["id"] == "r3")
    assert r3["reject_reason"] == "bad" and r3["attempts"] == 2 and r3["attempt_reasons"] == ["bad", "bad"]
    assert [m["rows"] for m in repo.part_meta("captions")] == [3, 3, 1]
    assert ctx.run_stats["captions"]["rejected_run"] == 1
    assert sorted(backend.sent) == sorted([f"r{i}" for i in range(7)] + ["r3"])

    again = CountingBackend()
    run_generation(Context(Recipe(shard_size=3), repo, state, loaded_backend=again), EchoStage(), inputs)
    assert again.sent == []  # every shard finished earlier


def test_map_runner_saves_side_data_before_the_part(tmp_path: Path, state) -> None:
    repo = BuildRepo(tmp_path)
    ctx = Context(Recipe(), repo, state)
    seen: list[int] = []

    def on_part(shard: int, table: pa.Table) -> None:
        assert not repo.part_path("encode", shard).exists()  # the part lands after its side data
        seen.append(shard)

    ds = Dataset.from_dict({"x": list(range(5))})
    run_map(ctx, "encode", Shards.of(ds, 2), lambda: lambda b: {"y": [v * 2 for v in b["x"]]}, batch_size=2,
            on_part=on_part)
    assert seen == [0, 1, 2]
    assert pa.concat_tables(repo.read_parts("encode")).column("y").to_pylist() == [0, 2, 4, 6, 8]
