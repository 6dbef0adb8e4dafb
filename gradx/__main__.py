"""``python -m gradx``: the command line (:mod:`gradx._cli.main`)."""

import sys

from gradx._cli.main import main

if __name__ == "__main__":
    sys.exit(main())
