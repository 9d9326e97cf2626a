"""``python -m mambamil`` — the same as the ``mambamil`` command."""

import sys

from mambamil.cli import main

sys.exit(main())
