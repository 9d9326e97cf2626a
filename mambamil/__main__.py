"""``python -m mambamil`` — the same as the ``mambamil`` command."""

import os
import sys

from mambamil.cli import main
from mambamil.errors import FAULT_EXIT

if __name__ == "__main__":
    rc = main()
    if rc == FAULT_EXIT:
        # After a failed write (a full disk) HDF5 can crash while the interpreter tears down (SIGSEGV at exit, also
        # before issue 22): the one-line error is out, so leave with its status without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)
