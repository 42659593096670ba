"""``python -m eqsat`` runs the command line."""

import sys

from eqsat.cli import main

sys.exit(main())
