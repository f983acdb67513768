"""unicorn-datasets: vision-language training data without images, on the Hugging Face stack."""

from importlib import metadata

try:  # the one version: the package metadata (pyproject's `version`)
    __version__ = metadata.version("unicorn-datasets")
except metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"
