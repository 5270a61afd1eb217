"""``python -m src``: see :mod:`src.cli`."""

import sys

from .cli import main

sys.exit(main())
