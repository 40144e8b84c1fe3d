"""`python -m pipeline`: the same as the `beam-gradients` console script."""

import sys

from pipeline.cli import main

sys.exit(main())
