"""Every finished generation, appended as it comes back: a kill -9 loses only the requests in flight.

One JSONL file per work unit (a shard) in the stage's work area. A rerun replays the file: a
generation is reused when its (row, attempt, request digest) matches, so a changed prompt, seed or
sampling setting is generated again instead of being replayed. The file of a unit is removed once
the unit's part has landed; a torn last line (the kill came mid-write) is ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any

from unicorn_datasets.generation.base import GenerationRequest, GenerationResult, SamplingParams

Key = tuple[str, int, str]  # (row key, attempt, request digest)


def request_digest(req: GenerationRequest, params: SamplingParams) -> str:
    """What decides a generation: the prompt or messages, schema, stop strings, seed and sampling."""
    body = [req.prompt, req.messages, req.json_schema, list(req.stop), req.seed, params.as_dict()]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:20]


class Journal:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, unit: int) -> Path:
        return self.folder / f"unit-{unit:05d}.jsonl"

    def load(self, unit: int) -> dict[Key, GenerationResult]:
        path = self._path(unit)
        out: dict[Key, GenerationResult] = {}
        if not path.exists():
            return out
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn write at the kill
                out[(e["row"], int(e["attempt"]), e["digest"])] = GenerationResult(
                    text=e["text"], n_tokens=int(e["n_tokens"]), finish_reason=e["finish_reason"],
                    extra={"journal": True},
                )
        return out

    def open(self, unit: int) -> IO[str]:
        return open(self._path(unit), "a", encoding="utf-8")

    @staticmethod
    def append(fh: IO[str], key: Key, result: GenerationResult) -> None:
        entry: dict[str, Any] = {"row": key[0], "attempt": key[1], "digest": key[2], "text": result.text,
                                 "n_tokens": result.n_tokens, "finish_reason": result.finish_reason}
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        fh.flush()  # into the OS page cache: survives the process being killed

    def discard(self, unit: int) -> None:
        self._path(unit).unlink(missing_ok=True)

    def pending_units(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("unit-*.jsonl"))
