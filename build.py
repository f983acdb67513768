"""`accelerate launch build.py ...` and `python build.py ...` run `unicorn build ...`."""

import sys

from unicorn_datasets.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
