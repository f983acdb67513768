"""Files that ship inside the package but are read and edited at the top of a checkout: `builders/`, `cards/`.

pyproject maps `unicorn_datasets.builders -> builders` and `unicorn_datasets.cards -> cards`, so a
wheel carries them inside the package; a source checkout reads the top-level folders themselves.
There is one copy of each file either way.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

SHIPPED = ("builders", "cards")


def shipped(folder: str) -> Traversable:
    """`builders` or `cards`: inside the installed package, else the checkout's top-level folder."""
    if folder not in SHIPPED:
        raise ValueError(f"not a shipped folder: {folder!r} (one of {', '.join(SHIPPED)})")
    inside = resources.files("unicorn_datasets") / folder
    if inside.is_dir():
        return inside
    checkout = Path(__file__).resolve().parent.parent / folder
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"the package's {folder}/ folder is missing (a broken install: reinstall unicorn-datasets)")
