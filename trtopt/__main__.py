"""``python -m trtopt`` is the ``trtopt`` command."""

import sys

from trtopt.cli.main import main

sys.exit(main())
