"""Plan, execute and store sweeps: every checkpoint x every quantization variant."""
from .store import Store
from .run import sweep

__all__ = ["Store", "sweep"]
