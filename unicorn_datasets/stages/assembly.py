"""What every stage's `assemble` shares: counting rows and reasons as parts stream into a config, and the
column helpers (defaults for columns old parts lack, constant columns, accepted rows, fixed-size embeddings).

Parts hold every input row (accepted or rejected, with raw model output); configs hold accepted
rows only, and artifacts/rejections.parquet holds the rest with their reason, so
rows in = rows out + rejections for every stage.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Columns that parts written before they existed lack (a resumed build): value for such rows.
_PART_DEFAULTS = {"truncated": (pa.bool_(), False), "attempt_reasons": (pa.list_(pa.string()), []),
                  "server_error": (pa.string(), None), "domain": (pa.string(), None), "label": (pa.string(), None)}


def with_defaults(table: pa.Table) -> pa.Table:
    for name, (typ, value) in _PART_DEFAULTS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, typ))
    return table


def constant(table: pa.Table, name: str, value: str) -> pa.Table:
    return table.append_column(name, pa.array([value] * table.num_rows, pa.string()))


def accepted(table: pa.Table, value_column: str) -> pa.Table:
    col = table.column(value_column)
    return table.slice(0, 0) if col.null_count == table.num_rows else table.filter(pc.is_valid(col))


class Tally:
    """The counts the summary and card need, taken from each part as it streams into its config: one read."""

    def __init__(self) -> None:
        self.rows = 0
        self.reasons: Counter[str] = Counter()
        self.attempt_reasons: Counter[str] = Counter()  # failed attempts, accepted rows' retries included

    def add(self, t: pa.Table) -> pa.Table:
        self.rows += t.num_rows
        self.reasons.update(r for r in t.column("reject_reason").to_pylist() if r is not None)
        if "attempt_reasons" in t.column_names:
            self.attempt_reasons.update(r for rs in t.column("attempt_reasons").to_pylist() for r in rs or [])
        return t

    def summary(self) -> dict[str, Any]:
        return {"rows_in": self.rows, "rows_out": self.rows - sum(self.reasons.values()),
                "rejected": dict(self.reasons), "attempt_reasons": dict(self.attempt_reasons)}


def embedding_matrix(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), -1)


def fixed_list(mat: np.ndarray, typ: pa.DataType) -> pa.Array:
    values = pa.array(np.ascontiguousarray(mat).reshape(-1), typ.value_type)
    return pa.FixedSizeListArray.from_arrays(values, typ.list_size)
