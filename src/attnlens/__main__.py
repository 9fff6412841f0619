"""``python -m attnlens``: the command line (also ``accelerate launch -m attnlens evaluate ...``)."""

import sys

from attnlens.cli import main

if __name__ == "__main__":
    sys.exit(main())
