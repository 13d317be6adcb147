"""Export a quantized model in a standard format that other stacks load without qrobust:
compressed-tensors, which ``transformers`` loads with the ``compressed-tensors`` package installed, on
CPU too. Integer grids are written as ``pack-quantized`` (codes packed into int32, per-group scales),
float formats as ``float-quantized`` (FP8), ``nvfp4-pack-quantized``, ``mxfp4/6-pack-quantized`` or
``mxfp8-quantized`` (which one: ``export_schemes.py``); what no compressed-tensors format holds is refused.

The codes come from the grid each quantizer recorded (``QuantResult.grids``), so the exported model
dequantizes to the very weights qrobust evaluated: in fp32 the reloaded model gives bit-identical
losses; in bf16/fp16 transformers holds fp32 scales (integer, FP8) in that dtype, which moves weights
by at most one part in 2^8 (bf16) or 2^11 (fp16) of their group's step. compressed-tensors decompresses
NVFP4 and MX through bf16: exact for MX (power-of-two scales) and for NVFP4 loaded in bf16; an NVFP4
export reloaded in fp32 holds our weights rounded to bf16 (the file itself holds them exactly).

Written with compressed-tensors' own compressor (not by hand), so the files follow its current format.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, QrobustError, QrobustWarning
from .pipelines.in_memory import QuantResult
from .export_schemes import exportable, scheme_for, unshared_global_scales
from .formats.grid import LayerGrid
from .formats.presets import COMBOS, FORMATS as FORMATS_KNOWN, parse_format
from .registry import QuantSpec, get_quantizer, quantizer_names

FORMATS = ("compressed-tensors",)


def require_package() -> Any:
    try:
        import compressed_tensors
    except ImportError:
        raise QrobustError("export needs the compressed-tensors package: pip install 'qrobust[export]' "
                           "(or pip install compressed-tensors)") from None
    return compressed_tensors


def weight_format(name: str) -> str:
    """The number format an export's ``format`` names: "" for "compressed-tensors" (the integer grid of
    bits and group size), else the name itself (a preset, a combo or the general spelling, which
    ``QuantSpec`` reads); any other name is one line."""
    if name in FORMATS:
        return ""
    weight = name.partition("+")[0]
    try:
        COMBOS.get(weight) or parse_format(weight)
    except ConfigError:
        raise ConfigError(f"unknown export format '{name}'; known: {', '.join(FORMATS)} (the integer grid of bits "
                          f"and group size) or a number format ({FORMATS_KNOWN.known()}, …)") from None
    return name


def export_format_name(spec: QuantSpec) -> str:
    """``compressed-tensors/<its format>`` for an exportable variant."""
    return f"compressed-tensors/{scheme_for(spec.number_format()).name}"


def check_spec(spec: QuantSpec) -> None:
    """What the format cannot hold, decided by the settings alone: checked before anything is loaded."""
    if not get_quantizer(spec.method).records_grid:
        raise QrobustError(f"method '{spec.method}' does not record its quantization grid, so its integers cannot "
                           f"be exported; export supports {', '.join(quantizer_names(records_grid=True))}")
    if not spec.sym:
        raise QrobustError("exporting an asymmetric grid is not supported: compressed-tensors writes its packed zero "
                           "points, but transformers does not load them back here; quantize with the symmetric "
                           "grid (the default, no --asym)")
    fmt = spec.number_format()
    if scheme_for(fmt) is None:
        raise QrobustError(f"number format '{fmt.label}' has no compressed-tensors weight format to export to; "
                           f"exportable: {exportable()}")
    if spec.act or spec.kv:
        quantized = " and ".join(f"{k}={v}" for k, v in (("act", spec.act), ("kv", spec.kv)) if v)
        raise QrobustError(f"export writes quantized weights only, not {quantized}: the activation / KV-cache scheme "
                           f"would be dropped; export the weight format alone ('{fmt.label}')")


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
        step = grid.number_format.effective(grid.scale, grid.tensor_scale)  # float formats: zero is 0
        back = step[:, grid.g_idx] * (grid.codes(w).float() - grid.zero[:, grid.g_idx])
        # the weights were cast to the model dtype after quantizing: allow that rounding, nothing more
        tol = torch.finfo(weight.dtype).eps * float(w.abs().max()) + 1e-6 * float(grid.scale.abs().max())
        if float((back - w).abs().max()) > tol:
            raise QrobustError(f"layer '{name}': the weights are not on the recorded grid; was the model changed "
                               "after quantizing?")


def export_compressed_tensors(model: nn.Module, result: QuantResult, out: str | Path, tokenizer=None,
                              extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (fake-quantized in place by the quantization that produced ``result``) to ``out``
    as a compressed-tensors checkpoint in the format that holds its number format. The model is
    compressed in place: discard it after. ``extra`` goes to ``qrobust_export.json`` beside the weights
    (provenance)."""
    require_package()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config

    from ..io.atomic import atomic_dir

    check_exportable(result)
    _verify_codes(model, result.grids)
    spec = result.spec
    fmt = spec.number_format()
    scheme = scheme_for(fmt)
    names = sorted(result.grids)
    group = QuantizationScheme(targets=names, weights=scheme.args(fmt), format=scheme.name)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": group}, format=scheme.name),
                              show_progress=False)
    with torch.no_grad():
        for name in names:
            scheme.fill(model.get_submodule(name), result.grids[name])
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    final = Path(out)
    with atomic_dir(final, "exported checkpoint") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        compressor.update_config(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        info = _provenance(result, extra)
        (tmp / "qrobust_export.json").write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
    unshared = info.get("vllm_unshared_global_scales")
    if unshared:
        warnings.warn(f"'{unshared[0]}' and the linears vLLM fuses with it (q/k/v, gate/up) have their own NVFP4 "
                      f"global scales ({len(unshared)} such groups): transformers loads the export exactly, vLLM "
                      "takes one global scale per fused linear and would not", QrobustWarning, stacklevel=2)
    return final


def _provenance(result: QuantResult, extra: dict[str, Any] | None) -> dict[str, Any]:
    """``qrobust_export.json``: the variant, its layers and error summary, how compressed-tensors
    decompresses it, and the fused linears whose NVFP4 global scales differ (see ``VLLM_FUSED``)."""
    spec = result.spec
    info = {"format": export_format_name(spec), "spec": spec.to_dict(), "label": spec.label,
            "layers": sorted(result.grids), "summary": result.summary(), **(extra or {})}
    dense = scheme_for(spec.number_format()).dense_dtype
    if dense is not None:
        info["decompresses_to"] = str(dense).removeprefix("torch.")
    unshared = unshared_global_scales(result.grids)
    if unshared:
        info["vllm_unshared_global_scales"] = unshared
    return info
