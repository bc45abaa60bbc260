"""``python -m streamdl`` is the ``streamdl`` command."""

import sys

from streamdl.streams.cli.main import main

sys.exit(main())
