import sys

from helpers.compare.cli import main

sys.exit(main())
