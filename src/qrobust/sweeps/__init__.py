"""Plan, execute and store sweeps: every checkpoint x every quantization variant."""
from ..results.store import Store
from .run import sweep

__all__ = ["Store", "sweep"]
