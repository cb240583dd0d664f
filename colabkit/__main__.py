"""``python -m colabkit`` is the ``colabkit`` command."""

import sys

from .cli import main

sys.exit(main())
