"""Loss geometry: Hessian sharpness (top eigenvalues) and trace, and weight statistics, the "why" behind
PTQ error."""
from .eigen import EigenResult, lanczos, power_iteration
from .hessian import HessianOperator, select_parameters
from .trace import TraceResult, hutchinson, hutchpp
from .weights import weight_stats

__all__ = ["EigenResult", "HessianOperator", "TraceResult", "hutchinson", "hutchpp", "lanczos", "power_iteration",
           "select_parameters", "weight_stats"]
