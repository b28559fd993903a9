"""`python -m veneer`."""

import sys

from veneer.cli import main

sys.exit(main())
