"""``python -m mambamil`` — the same as the ``mambamil`` command."""

import sys

from mambamil.cli import main

if __name__ == "__main__":
    sys.exit(main())
