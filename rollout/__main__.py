"""`python -m rollout` is the `sluice` command."""

import sys

from rollout.cli import main

sys.exit(main())
