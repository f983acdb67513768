"""Running a build: the context every stage shares, the shard runner, and the loop over the recipe's stages."""

from unicorn_datasets.pipeline.loop import build, collect_seeds

__all__ = ["build", "collect_seeds"]
