"""``python -m perturber``: the ``perturber`` command."""

import sys

from perturber.pipeline.cli import main

sys.exit(main())
