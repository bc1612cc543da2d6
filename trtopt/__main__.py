"""``python -m trtopt`` is the ``trtopt`` command."""

import sys

from trtopt.cli import main

sys.exit(main())
