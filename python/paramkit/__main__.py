"""`python -m paramkit` is the same command line as `paramkit`."""
import sys

from .cli import main

sys.exit(main())
