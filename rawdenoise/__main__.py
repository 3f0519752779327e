"""`python -m rawdenoise` runs the rawdenoise command."""

import sys

from .cli import main

sys.exit(main())
