"""``python -m cmav``: the ``cmav`` command."""

import sys

from cmav.cli.main import main

sys.exit(main())
