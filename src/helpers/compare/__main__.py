import sys

from helpers.compare.cli import main

if __name__ == "__main__":
    sys.exit(main())
