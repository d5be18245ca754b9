"""`python -m jobs.cli`: the `connector` command."""

import sys

from jobs.cli import main

sys.exit(main())
