"""``python -m qrobust`` (and ``torchrun --nproc-per-node N -m qrobust train CFG``)."""
import sys

from .cli import main

sys.exit(main())
