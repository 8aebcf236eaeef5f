"""``python -m se_nas`` is the ``se-nas`` command."""
import sys

from .cli.parser import main

sys.exit(main())
