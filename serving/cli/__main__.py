"""``python -m serving.cli``: the ``cascade`` command without the console script."""

import sys

from serving.cli import main

sys.exit(main())
