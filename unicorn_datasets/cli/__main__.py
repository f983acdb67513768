"""`python -m unicorn_datasets.cli ...` == `unicorn ...`."""

import sys

from unicorn_datasets.cli import main

sys.exit(main())
