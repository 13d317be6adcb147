"""Weight-only fake quantization: a registry of quantizers over one shared quantizer grid."""
from .pipelines.in_memory import QuantResult, quantize, quantized, select_linears
from .calibration import CalibrationSet
from .registry import QUANTIZERS, QuantSpec, Quantizer, get_quantizer, register_quantizer
from .methods import awq, gptq, rtn  # noqa: F401  (registers "awq", "gptq", "rtn")

__all__ = ["CalibrationSet", "QuantResult", "quantize", "quantized", "select_linears", "QUANTIZERS", "QuantSpec", "Quantizer",
           "get_quantizer", "register_quantizer"]
