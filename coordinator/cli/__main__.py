"""``python -m coordinator.cli``: the same as the ``concord`` command."""

import sys

from coordinator.cli import main

sys.exit(main())
