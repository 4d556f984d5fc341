"""``python -m dynprune``: the command line (:mod:`dynprune.cli`), as ``torchrun -m dynprune`` needs it."""

import sys

from .cli import main

sys.exit(main())
