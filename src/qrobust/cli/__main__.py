"""``python -m qrobust.cli``."""
import sys

from . import main

sys.exit(main())
