"""Checks that must pass before a build writes anything: today, that a fresh server build's endpoints answer.

A fresh build probes its servers before OUT/.build/ exists, so a server that is down (or a URL that
reaches nothing) costs one line and leaves nothing on disk; that answer stands for its first generation
stage. A resumed build probes later, in the shard runner, and only when it has generation left: finishing
a build whose generation is done needs no server. Every later generation stage probes again.
"""

from __future__ import annotations

from unicorn_datasets.dataset.layout import STATE
from unicorn_datasets.generation.base import BackendUnavailable
from unicorn_datasets.pipeline.context import Context


def probe_servers_first(ctx: Context) -> None:
    """Rank 0 probes; every rank learns the outcome (a rank that raised alone would leave the others waiting)."""
    if not ctx.recipe.llm.endpoints or (ctx.repo.work / STATE).exists():
        return
    error = None
    if ctx.is_main:
        from unicorn_datasets.generation import make_backend

        backend = make_backend(ctx.recipe.llm)
        try:
            backend.check_available()
        except BackendUnavailable as e:
            error = f"{e}; nothing was written: start the server(s), then run the same command"
        finally:
            backend.close()
    error = ctx.broadcast(error)
    if error:
        raise BackendUnavailable(error)
    ctx.servers_checked = True
