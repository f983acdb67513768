"""What every stage of one build shares: the recipe, the dataset folder, the process group, lazily loaded models."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from unicorn_datasets.dataset.atomic import write_text
from unicorn_datasets.dataset.layout import LLM
from unicorn_datasets.dataset.repo import BuildRepo
from unicorn_datasets.recipe import Recipe


def log(msg: str, rank: int | None = None) -> None:
    prefix = f"[unicorn rank {rank}]" if rank is not None else "[unicorn]"
    print(f"{prefix} {msg}", file=sys.stderr, flush=True)


def make_state() -> Any:
    """accelerate's PartialState; CPU-only machines still get a real gloo group under `--multi_gpu`."""
    import torch
    from accelerate import PartialState

    # Ranks that finish early wait at barriers for the slowest: a long timeout, not the 30 min default.
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=72))


@dataclass
class Context:
    recipe: Recipe
    repo: BuildRepo
    state: Any  # accelerate.PartialState
    trust_remote_code: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)  # per stage, for the manifest and card
    run_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stage, this rank's work
    loaded_backend: Any = None  # set once the LLM is loaded (None when every LLM shard was done earlier)
    loaded_encoder: Any = None
    # a fresh build's preflight just had every rank's servers answer: the first generation stage, a moment later,
    # does not ask again (a second one-token request is one more latency before any row)
    servers_checked: bool = False

    @property
    def rank(self) -> int:
        return self.state.process_index

    @property
    def world(self) -> int:
        return self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def shard_size(self) -> int:
        return self.recipe.shard_size

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    def backend(self) -> Any:
        if self.loaded_backend is None:
            from unicorn_datasets.generation import make_backend

            self.loaded_backend = make_backend(self.recipe.llm, device=str(self.state.device))
            # kept for the manifest and card of a later run that finishes without loading the model
            write_text(self.repo.work / LLM, json.dumps(self.loaded_backend.describe(), default=str))
        return self.loaded_backend

    def close(self) -> None:
        """Release the LLM backend (HTTP clients, threads, event loops) when the build ends."""
        if self.loaded_backend is not None:
            self.loaded_backend.close()

    def llm_describe(self) -> dict[str, Any]:
        """LLM provenance: from the loaded backend, or as saved by the run that loaded it."""
        if self.loaded_backend is not None:
            return self.loaded_backend.describe()
        saved = self.repo.work / LLM
        return json.loads(saved.read_text()) if saved.exists() else {"model": self.llm_id()}

    def reserved_tokens(self) -> Any:
        """Tokens no seed, caption or conversation may carry: the image placeholder, the LLM's special tokens."""
        from unicorn_datasets.text.reserved import for_backend

        return for_backend(self.backend())

    def encoder(self) -> Any:
        if self.loaded_encoder is None:
            from unicorn_datasets.encoders import load_encoder

            self.loaded_encoder = load_encoder(
                self.recipe.transfer.encoder, device=str(self.state.device), trust_remote_code=self.trust_remote_code
            )
        return self.loaded_encoder

    def llm_id(self) -> str:
        """The model id recorded in every row (endpoint URLs live in the manifest, not in rows)."""
        return self.recipe.llm.model

    def prompt_mode(self) -> str:
        """The one resolution of `llm.prompt_mode`: "auto" asks the backend whether the model has a chat template."""
        from unicorn_datasets.generation.base import resolve_prompt_mode

        mode = self.recipe.llm.prompt_mode
        return mode if mode != "auto" else resolve_prompt_mode(mode, self.backend().supports_chat)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (a list of one on a single process)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]
