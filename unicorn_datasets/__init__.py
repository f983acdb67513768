"""unicorn-datasets: vision-language training data without images, on the Hugging Face stack."""

__version__ = "0.1.0"
