"""``python -m tunespec``: the same command line as ``tunespec``."""

import sys

from .cli import main

sys.exit(main())
