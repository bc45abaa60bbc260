"""``python -m streams`` is the ``streamdl`` command."""

import sys

from streams.cli import main

sys.exit(main())
