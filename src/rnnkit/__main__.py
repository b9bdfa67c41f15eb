"""``python -m rnnkit``: the same as the ``rnnkit`` command."""
import sys

from .cli.main import main

sys.exit(main())
