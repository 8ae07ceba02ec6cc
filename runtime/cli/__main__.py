"""`python -m zsad_edge.runtime.cli`, the same as the `zsad-edge` command."""

import sys

from . import main

sys.exit(main())
