"""Live PTQ-robustness monitoring while training (``monitor.core``), and cheap predictors of GPTQ ΔQ L
(``monitor.predictors``). Floor 4, beside ``training``: the loop calls the monitor, never the reverse.
The predictors register when ``qrobust.monitor.predictors`` is imported (the monitor does so when it checks
its config), not on import of this package."""
from .core import Monitor, MonitorResult

__all__ = ["Monitor", "MonitorResult"]
