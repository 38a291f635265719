"""`python -m stream.cli ...`: the same as the `skipcache` console script."""
import sys

from stream.cli.main import main

sys.exit(main())
