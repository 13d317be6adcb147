"""Which compressed-tensors weight format holds which number format, as data: one ``CTScheme`` per
compressed-tensors format, matched on the number format's element, scale type and block size.

    pack-quantized        int2…int8, fp32 scales, channel or g<N>     (integer codes packed into int32)
    float-quantized       FP8 E4M3 elements, fp32 scales, channel or g<N>   (weight stored as float8_e4m3fn)
    nvfp4-pack-quantized  FP4 E2M1, E4M3 scales, g16, fp32 global scale     (two elements per uint8)
    mxfp4-pack-quantized  FP4 E2M1, E8M0 scales, g32                        (scales as biased uint8 exponents)
    mxfp6-pack-quantized  FP6 E2M3, E8M0 scales, g32
    mxfp8-quantized       FP8 E4M3, E8M0 scales, g32

Everything else has no compressed-tensors weight format (E5M2 and E3M2 elements, fp16 scales, other
block sizes for E4M3/E8M0 scales) and is refused. The nibble-packed and MX formats decompress to bf16
in compressed-tensors 0.20 (``dense_dtype``): transformers must then load them dequantized
(``CompressedTensorsConfig(dequantize=True)``) or in bf16, since its default fp32 load fails at the first
forward with mismatched dtypes; MX weights (power-of-two scales) survive that bf16 exactly, NVFP4 weights
(fp32 global scale) are rounded to bf16 by it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..registries import Registry
from .formats.grid import LayerGrid
from .formats.number_format import NumberFormat

INTS = tuple(f"int{b}" for b in range(2, 9))
SCALE_DTYPES = {"fp32": None, "e4m3": torch.float8_e4m3fn, "e8m0": torch.uint8}


@dataclass(frozen=True)
class CTScheme:
    """One compressed-tensors weight format: the number formats it holds and how to describe them.
    ``blocks``: the block sizes it takes (None: per channel or any group); ``strategy``: compressed-tensors'
    name for a blocked layout; ``dense_dtype``: the dtype its decompressor produces (None: the model's)."""

    name: str
    elements: tuple[str, ...]
    scale: str
    blocks: tuple[int, ...] | None = None
    strategy: str = "group"
    dense_dtype: torch.dtype | None = None
    holds_text: str = ""  # what it holds, in format names, for messages

    def holds(self, fmt: NumberFormat) -> bool:
        return (fmt.element in self.elements and fmt.scale == self.scale and fmt.sym
                and (self.blocks is None or fmt.block_size in self.blocks))

    def args(self, fmt: NumberFormat) -> Any:
        """compressed-tensors' ``QuantizationArgs`` for weights in ``fmt``."""
        from compressed_tensors.quantization import QuantizationArgs
        layout = ({"strategy": "channel"} if fmt.block_size == -1
                  else {"strategy": self.strategy, "group_size": fmt.block_size})
        kind = "int" if fmt.is_int else "float"
        return QuantizationArgs(num_bits=fmt.bits, type=kind, symmetric=True, dynamic=False,
                                scale_dtype=SCALE_DTYPES[self.scale], **layout)

    def fill(self, module: nn.Module, grid: LayerGrid) -> None:
        """Put the grid's parameters into the observer slots ``apply_quantization_config`` made, for the
        compressor to quantize the (already fake-quantized) weight with: it then finds our codes again.
        Integer scales take the model's dtype (as before formats); float formats keep fp32 scales, which
        hold E4M3 / E8M0 values exactly and leave an fp32 per-channel FP8 scale unrounded."""
        if grid.format is None:  # integers: our codes 0 … 2^b − 1 are the format's −2^(b−1) … 2^(b−1) − 1, shifted
            module.weight_scale.copy_(grid.scale.to(module.weight_scale.dtype))
            module.weight_zero_point.copy_((grid.zero - 2 ** (grid.bits - 1)).to(module.weight_zero_point.dtype))
            return
        module.weight_scale.data = grid.scale.float().to(module.weight_scale.device).clone()
        if grid.tensor_scale is not None:
            module.weight_global_scale.data = grid.tensor_scale.float().to(module.weight_global_scale.device).clone()

SCHEMES: Registry[CTScheme] = Registry("compressed-tensors format")
for _s in (CTScheme("pack-quantized", INTS, "fp32", holds_text="int2…int8 (symmetric)"),
           CTScheme("float-quantized", ("e4m3",), "fp32", holds_text="fp8-e4m3 per channel or g<N> (fp32 scales)"),
           CTScheme("nvfp4-pack-quantized", ("e2m1",), "e4m3", (16,), "tensor_group", torch.bfloat16, "nvfp4"),
           CTScheme("mxfp4-pack-quantized", ("e2m1",), "e8m0", (32,), dense_dtype=torch.bfloat16, holds_text="mxfp4"),
           CTScheme("mxfp6-pack-quantized", ("e2m3",), "e8m0", (32,), dense_dtype=torch.bfloat16,
                    holds_text="mxfp6-e2m3"),
           CTScheme("mxfp8-quantized", ("e4m3",), "e8m0", (32,), dense_dtype=torch.bfloat16, holds_text="mxfp8-e4m3")):
    SCHEMES[_s.name] = _s


def exportable() -> str:
    """The number formats some compressed-tensors format holds, for messages."""
    return ", ".join(s.holds_text for s in SCHEMES.values())


def scheme_for(fmt: NumberFormat) -> CTScheme | None:
    """The compressed-tensors format that holds ``fmt``, or None."""
    return next((s for s in SCHEMES.values() if s.holds(fmt)), None)


# linears vLLM loads as one (its packed_modules_mapping: qkv_proj, gate_up_proj), with ONE global scale,
# the max of theirs; llm-compressor therefore gives them a common NVFP4 global scale before quantizing
VLLM_FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def unshared_global_scales(grids: dict[str, LayerGrid]) -> list[str]:
    """The first linear of each group vLLM fuses whose members' tensor scales differ (qrobust's NVFP4
    takes each linear's own, compressed-tensors' per-tensor rule): vLLM would not load those as evaluated."""
    found = []
    for name, grid in sorted(grids.items()):
        parent, _, leaf = name.rpartition(".")
        for fused in (f for f in VLLM_FUSED if leaf == f[0] and grid.tensor_scale is not None):
            members = [grids[m] for m in (f"{parent}.{x}" for x in fused) if m in grids]
            if len({float(g.tensor_scale) for g in members if g.tensor_scale is not None}) > 1:
                found.append(name)
    return found


def reload_options(fmt: NumberFormat, dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` keywords that load an export of ``fmt`` in ``dtype`` with transformers: formats
    whose decompressor yields another dtype are dequantized at load (else the forward mixes dtypes)."""
    scheme = scheme_for(fmt)
    if scheme is None or scheme.dense_dtype in (None, dtype):
        return {}
    from transformers import CompressedTensorsConfig
    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


__all__ = ["CTScheme", "SCHEMES", "VLLM_FUSED", "exportable", "reload_options", "scheme_for", "unshared_global_scales"]
