"""Weight-only fake quantization: a registry of quantizers (``registry``) following one contract
(``base``), over shared grids (``formats``), driven by pipelines (``pipelines``: in memory, layer-streamed)."""
from .base import BlockDone, BlockJob, Quantizer
from .calibration import CalibrationSet
from .pipelines.in_memory import QuantResult, quantize, quantized, select_linears
from .pipelines.act_hooks import needs_calibration
from .registry import QUANTIZERS, QuantSpec, base_label, get_quantizer, register_quantizer
from .methods import awq, gptq, rtn  # noqa: F401  (registers "awq", "gptq", "rtn")

__all__ = ["BlockDone", "BlockJob", "CalibrationSet", "QuantResult", "quantize", "quantized", "select_linears",
           "QUANTIZERS", "QuantSpec", "Quantizer", "base_label", "get_quantizer", "needs_calibration",
           "register_quantizer"]
