"""The stage registry: the built-in stages, imported here in build order, register themselves (`StageSpec`).

Adding a stage is its module (with its `register(StageSpec(...))`), its prompts, its recipe section and its
tests, plus one import line below. The loop, the manifest, the card, the rejections table and the summary
read `registered()`.
"""

from unicorn_datasets.stages.base import StageSpec, register, registered_specs, unregister

# the built-in stages, in build order (each module registers its stage when imported)
from unicorn_datasets.stages import captions, instruct, pretrain  # noqa: E402, F401  isort: skip


def registered() -> tuple[StageSpec, ...]:
    """Every registered stage, in build order."""
    return registered_specs()


def spec_of(name: str) -> StageSpec:
    for spec in registered_specs():
        if spec.name == name:
            return spec
    raise KeyError(f"no stage named {name!r} is registered")


__all__ = ["StageSpec", "register", "registered", "spec_of", "unregister"]
