"""``python -m app.cli``: the ``voxgate`` command."""

import sys

from app.cli.main import main

sys.exit(main())
