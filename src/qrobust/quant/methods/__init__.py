"""Quantization methods, one module each, registered by name with ``@register_quantizer``."""
