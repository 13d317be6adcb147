"""Live PTQ-robustness monitoring while training (``monitor.core``), and cheap predictors of GPTQ ΔQ L
(``monitor.predictors``). Floor 4, beside ``training``: the loop calls the monitor, never the reverse."""
