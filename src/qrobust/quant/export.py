"""Export a quantized model in a standard format that other stacks load without qrobust:
compressed-tensors ``pack-quantized`` (integer codes packed into int32, per-group scales), which
``transformers`` loads with the ``compressed-tensors`` package installed, on CPU too.

The codes come from the grid each quantizer recorded (``QuantResult.grids``), so the exported model
dequantizes to the very weights qrobust evaluated: in fp32 the reloaded model gives bit-identical
losses; in bf16/fp16 the scales are stored in that dtype, which moves weights by at most one part
in 2^8 (bf16) or 2^11 (fp16) of their group's step.

Written with compressed-tensors' own compressor (not by hand), so the files follow its current format.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import QrobustError
from .pipelines.in_memory import QuantResult
from .formats.grid import LayerGrid
from .registry import QuantSpec

FORMATS = ("compressed-tensors",)
GRID_METHODS = ("rtn", "gptq")  # quantizers that record the grid they used (QuantResult.grids)


def _require_package() -> Any:
    try:
        import compressed_tensors
    except ImportError:
        raise QrobustError("export needs the compressed-tensors package: pip install 'qrobust[export]' "
                           "(or pip install compressed-tensors)") from None
    return compressed_tensors


def check_spec(spec: QuantSpec) -> None:
    """What the format cannot hold, decided by the settings alone: checked before anything is loaded."""
    if spec.method not in GRID_METHODS:
        raise QrobustError(f"method '{spec.method}' does not record its quantization grid, so its integers cannot "
                           f"be exported; export supports {' and '.join(GRID_METHODS)}")
    if not spec.sym:
        raise QrobustError("exporting an asymmetric grid is not supported: compressed-tensors writes its packed zero "
                           "points, but transformers does not load them back here; quantize with the symmetric "
                           "grid (the default, no --asym)")


def check_exportable(result: QuantResult) -> None:
    """One clear line for anything the format cannot hold, before any file is written."""
    check_spec(result.spec)
    missing = [n for n in result.layers if n not in result.grids]
    if missing:
        raise QrobustError(f"layer '{missing[0]}' has no recorded quantization grid; its integers cannot be exported")
    for name, grid in result.grids.items():
        cols = grid.g_idx.numel()
        g = cols if grid.group_size == -1 else grid.group_size
        if grid.group_size != -1 and cols % g:
            raise QrobustError(f"layer '{name}' has {cols} input columns, not a multiple of the group size {g}; "
                               "the format needs whole groups: choose a group size that divides it, or -1")
        if not torch.equal(grid.g_idx.cpu(), torch.arange(cols) // g):
            raise QrobustError(f"layer '{name}' was quantized with act-order and dynamic groups, whose per-column "
                               "group order this export does not write; add static_groups=true (or drop act_order)")


def _verify_codes(model: nn.Module, grids: dict[str, LayerGrid]) -> None:
    """The codes must dequantize to the weights qrobust evaluated (else the export would differ)."""
    for name, grid in grids.items():
        weight = model.get_submodule(name).weight.detach()
        w = weight.float()
        back = grid.scale[:, grid.g_idx] * (grid.codes(w).float() - grid.zero[:, grid.g_idx])
        # the weights were cast to the model dtype after quantizing: allow that rounding, nothing more
        tol = torch.finfo(weight.dtype).eps * float(w.abs().max()) + 1e-6 * float(grid.scale.abs().max())
        if float((back - w).abs().max()) > tol:
            raise QrobustError(f"layer '{name}': the weights are not on the recorded grid; was the model changed "
                               "after quantizing?")


def export_compressed_tensors(model: nn.Module, result: QuantResult, out: str | Path, tokenizer=None,
                              extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (fake-quantized in place by the quantization that produced ``result``) to ``out``
    as a compressed-tensors pack-quantized checkpoint. The model is compressed in place: discard it after.
    ``extra`` goes to ``qrobust_export.json`` beside the weights (provenance)."""
    _require_package()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)

    from ..io.atomic import atomic_dir

    check_exportable(result)
    _verify_codes(model, result.grids)
    spec = result.spec
    names = sorted(result.grids)
    group = {"strategy": "channel"} if spec.group_size == -1 else {"strategy": "group", "group_size": spec.group_size}
    args = QuantizationArgs(num_bits=spec.bits, type="int", symmetric=True, **group)
    config = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=names, weights=args)},
                                format="pack-quantized")
    apply_quantization_config(model, config, show_progress=False)
    offset = 2 ** (spec.bits - 1)  # our codes are 0 … 2^b − 1; the format's are signed, −2^(b−1) … 2^(b−1) − 1
    with torch.no_grad():
        for name in names:
            m, grid = model.get_submodule(name), result.grids[name]
            m.weight_scale.copy_(grid.scale.to(m.weight_scale.dtype))
            m.weight_zero_point.copy_((grid.zero - offset).to(m.weight_zero_point.dtype))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    final = Path(out)
    with atomic_dir(final, "exported checkpoint") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        compressor.update_config(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        info = {"format": "compressed-tensors/pack-quantized", "spec": spec.to_dict(), "label": spec.label,
                "layers": names, "summary": result.summary(), **(extra or {})}
        (tmp / "qrobust_export.json").write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
    return final

# public name for the export workflow (shim until the quant rebuild makes it public)
require_package = _require_package
