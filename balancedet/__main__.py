"""``python -m balancedet``: the command line, as ``torchrun -m balancedet train ...`` starts it."""

import sys

from balancedet.cli import main

sys.exit(main())
