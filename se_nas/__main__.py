"""``python -m se_nas`` is the ``se-nas`` command."""
import sys

from .cli import main

sys.exit(main())
