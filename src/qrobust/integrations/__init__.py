"""The monitor in other trainers: a Hugging Face ``TrainerCallback`` and a Lightning ``Callback``.

Each is imported only when asked for (``from qrobust.integrations import QrobustLightningCallback``),
so qrobust never needs Lightning, nor ``accelerate`` (which HF's ``Trainer`` needs), unless they are used:
``pip install 'qrobust[monitor]'`` installs both.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .sinks import MonitorLike, make_monitor, summary_line, text_blocks

_LAZY = {"QrobustTrainerCallback": ".hf_trainer", "QrobustLightningCallback": ".lightning_callback"}
EXTRA = "pip install 'qrobust[monitor]'"

__all__ = ["MonitorLike", "QrobustLightningCallback", "QrobustTrainerCallback", "make_monitor", "summary_line",
           "text_blocks"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = import_module(_LAZY[name], __name__)
    except ImportError as e:
        from ..errors import QrobustError
        raise QrobustError(f"{name} needs the {e.name or 'missing'} package: {EXTRA}") from None
    return getattr(module, name)
