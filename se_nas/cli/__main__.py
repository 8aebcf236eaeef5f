"""``python -m se_nas.cli`` is the ``se-nas`` command, like ``python -m se_nas``."""
import sys

from .parser import main

sys.exit(main())
