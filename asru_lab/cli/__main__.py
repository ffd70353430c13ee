"""`python -m asru_lab.cli ...`: the same as the `asru-lab` script."""

import sys

from asru_lab.cli import main

sys.exit(main())
