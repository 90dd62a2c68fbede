"""`python -m activedaemon.cli ...` (what torchrun runs for DDP training)."""

import sys

from activedaemon.cli import main

sys.exit(main())
