"""Adds the top-level builders/ and cards/ to the wheel as unicorn_datasets.builders / .cards (see pyproject)."""

from setuptools import find_packages, setup

SHIPPED = {"unicorn_datasets.builders": "builders", "unicorn_datasets.cards": "cards"}

setup(packages=[*find_packages(include=["unicorn_datasets*"]), *SHIPPED], package_dir=SHIPPED)
