"""artifacts/rejections.parquet: every rejected row of every stage that rejects rows, with its reason, its input
and the last raw model output, so rows in = rows out + rejections for every stage.

The stages and their input columns come from the stage registry (`StageSpec.reject_input`), passed in by the
build loop: a stage that rejects rows cannot be left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from unicorn_datasets.dataset.layout import REJECTIONS
from unicorn_datasets.dataset.repo import BuildRepo, write_parquet

REJECTIONS_SCHEMA = pa.schema(
    [("stage", pa.string()), ("id", pa.string()), ("reason", pa.string()), ("input", pa.string()),
     ("raw_output", pa.string()), ("attempts", pa.int32()), ("attempt_reasons", pa.list_(pa.string())),
     ("server_error", pa.string()),  # the server's last error when a request failed for good
     ("duplicate_of", pa.string())]  # near_duplicate rows: the id of the kept caption they repeat (near_dup.py)
)


def _column(t: pa.Table, name: str) -> pa.Array | pa.ChunkedArray:
    """A part column, or nulls for a column the stage's parts do not carry (model-free stages: no raw output)."""
    return t.column(name) if name in t.column_names else pa.nulls(t.num_rows, REJECTIONS_SCHEMA.field(name).type)


def write_rejections(repo: BuildRepo, inputs: Mapping[str, str]) -> int:
    """All rejected rows of the stages in `inputs` ({stage: the part column recorded as `input`})."""
    tables = [REJECTIONS_SCHEMA.empty_table()]
    for stage, input_col in inputs.items():
        for t in repo.read_parts(stage) if (repo.work / stage).exists() else []:
            r = t.filter(pc.is_valid(t.column("reject_reason")))
            reasons = _column(r, "attempt_reasons")
            columns = [pa.array([stage] * r.num_rows), r.column("id"), r.column("reject_reason"),
                       r.column(input_col), _column(r, "raw_output"), _column(r, "attempts"),
                       pa.array([[]] * r.num_rows, pa.list_(pa.string())) if "attempt_reasons" not in r.column_names
                       else reasons.cast(pa.list_(pa.string())),
                       _column(r, "server_error"), _column(r, "duplicate_of")]
            tables.append(pa.Table.from_arrays(columns, names=REJECTIONS_SCHEMA.names).cast(REJECTIONS_SCHEMA))
    table = pa.concat_tables(tables)
    write_parquet(table, repo.artifacts() / REJECTIONS)
    return table.num_rows
