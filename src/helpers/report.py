"""`python -m helpers.report [KEY=VALUE ...]`: the command line, kept under its documented name
(the code is helpers.cli)."""

import sys

from helpers.cli import main

if __name__ == "__main__":
    sys.exit(main())
