"""One checkpoint, quantized: the variant from its settings, its calibration windows, the output-folder
check, and the two ways out: a fake-quantized copy saved as a checkpoint (``qrobust quantize``) and an
integer export other stacks load (``qrobust export``)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from ..data.checkpoint_blocks import calib_blocks, eval_blocks
from ..data.tokenizer import load_tokenizer
from ..errors import QrobustError
from ..evaluate import evaluate_loss
from ..models import check_vocab, load_checkpoint, resolve_device, resolve_dtype, save_checkpoint
from ..quant import QuantSpec, get_quantizer, needs_calibration, quantized
from .options import CalibrationOptions, ExportOptions, LoadOptions


def quant_spec(method: str = "rtn", bits: int = 4, group_size: int = 128, sym: bool = True,
               include: tuple[str, ...] | list[str] = (), exclude: tuple[str, ...] | list[str] = (),
               options: Mapping[str, Any] | None = None, format: str = "") -> QuantSpec:
    """The variant, with method options its quantizer accepts: a bad option fails here, before any work.
    ``format``: a named number format (``nvfp4``, ``w8a8-int8``, ``int4-g128+a-fp8-e4m3-token`` …) in place
    of bits, group size and sym."""
    opts = dict(options or {})
    spec = QuantSpec(method=method, bits=bits, group_size=group_size, sym=sym, include=tuple(include),
                     exclude=tuple(exclude), options=tuple(sorted(opts.items())), format=format)
    get_quantizer(spec.method).check_options(opts)
    return spec


def as_spec(spec: QuantSpec | Mapping[str, Any]) -> QuantSpec:
    """A :class:`QuantSpec`, or the keyword arguments of :func:`quant_spec`."""
    return spec if isinstance(spec, QuantSpec) else quant_spec(**spec)


def calibration_for(spec: QuantSpec, checkpoint: str | Path, calibration: CalibrationOptions | None = None,
                    trust_remote_code: bool = False) -> torch.Tensor | None:
    """The checkpoint's calibration windows when ``spec`` needs them (its method, static activation scales, smoothquant), else None."""
    if not needs_calibration(spec):
        return None
    c = calibration or CalibrationOptions()
    return calib_blocks(checkpoint, c.n_samples, c.seq_len, c.corpus, c.seed, c.field,
                        trust_remote_code=trust_remote_code)


def check_quant_out(out: Path, checkpoint: Path, marker: str = "quantization.json",
                    what: str = "qrobust quantize") -> None:
    """Refuse any --out that would overwrite the FP checkpoint or unrelated data."""
    o, c = out.resolve(), checkpoint.resolve()
    if o == c or c in o.parents:
        raise QrobustError(f"--out '{out}' is the checkpoint folder or inside it; choose a separate folder")
    if o.exists() and not o.is_dir():
        raise QrobustError(f"--out '{out}' is an existing file; choose a new folder")
    anc = next(p for p in [o, *o.parents] if p.exists())
    if not anc.is_dir():
        raise QrobustError(f"cannot write the quantized checkpoint to '{out}': '{anc}' is a file, not a folder")
    if o.is_dir() and any(o.iterdir()) and not (o / marker).is_file():
        raise QrobustError(f"--out '{out}' already holds other files; choose a new or empty folder "
                           f"(only an earlier '{what}' output is replaced)")


def quantize_checkpoint(checkpoint: str | Path, out: str | Path, spec: QuantSpec | Mapping[str, Any],
                        calibration: CalibrationOptions | None = None, load: LoadOptions | None = None) -> dict[str, Any]:
    """Fake-quantize ``checkpoint`` and save the dequantized weights (+ ``quantization.json``) to ``out``;
    returns that per-layer report. The FP checkpoint is never written to."""
    out, load = Path(out), load or LoadOptions()
    check_quant_out(out, Path(checkpoint))
    spec = as_spec(spec)
    if spec.act or spec.kv:
        raise QrobustError(f"{spec.label}: a saved checkpoint holds weights only; activation / KV-cache quantization "
                           "happens at run time: evaluate the variant instead, or drop act / kv")
    model = load_checkpoint(checkpoint, allow_pickle=load.allow_pickle, trust_remote_code=load.trust_remote_code,
                            dtype=load.dtype, device=load.device)
    tok = load_tokenizer(checkpoint, load.trust_remote_code)
    calib = calibration_for(spec, checkpoint, calibration, load.trust_remote_code)
    with quantized(model, spec, calib) as res:
        report = {"source": str(Path(checkpoint).resolve()), "spec": spec.to_dict(), "label": spec.label,
                  "summary": res.summary(), "layers": res.layers, "seconds": res.seconds}
        try:
            save_checkpoint(model, tok, out, files={"quantization.json": json.dumps(report, indent=1)})
        except OSError as e:
            raise QrobustError(f"cannot write the quantized checkpoint to '{out}': {e.strerror or e}") from None
    return report


def _reloaded_loss(path: Path, blocks: torch.Tensor, opts: ExportOptions, spec: QuantSpec) -> float:
    """The export's loss on ``blocks``, loaded back by transformers alone."""
    import warnings

    from transformers import AutoModelForCausalLM

    from ..models import remote_code_error, remote_code_refused
    from ..quant.export_schemes import reload_options
    dtype = resolve_dtype(opts.dtype)
    try:
        with warnings.catch_warnings():  # "you passed quantization_config …": we pass only its dequantize flag
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            reloaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True,
                                                            trust_remote_code=bool(opts.trust_remote_code),
                                                            **reload_options(spec.number_format(), dtype))
    except ValueError as e:
        if remote_code_refused(e):
            raise remote_code_error(path) from None
        raise
    reloaded = reloaded.to(resolve_device(opts.device))
    return evaluate_loss(reloaded, blocks, name=f"the export '{path}'").loss


def _export_spec(opts: ExportOptions, method_options: Mapping[str, Any]) -> QuantSpec:
    """The variant to export, refused before anything is loaded when the format cannot hold it."""
    from ..quant.export import check_spec, require_package, weight_format
    number_format = weight_format(opts.format)
    require_package()
    spec = quant_spec(opts.method, opts.bits, opts.group_size, opts.sym, opts.include, opts.exclude, method_options)
    if number_format:  # a number format written as compressed-tensors: it sets bits and blocks
        spec = dataclasses.replace(spec, format=number_format)
    check_spec(spec)
    return spec


def export_checkpoint(checkpoint: str | Path, out: str | Path, opts: ExportOptions,
                      method_options: Mapping[str, Any]) -> dict[str, Any]:
    """Quantize ``checkpoint`` and write it as compressed-tensors to ``out`` (see ``qrobust.export``)."""
    from ..quant.export import check_exportable, export_compressed_tensors
    from ..quant.pipelines.in_memory import quantize_inplace
    check_quant_out(Path(out), Path(checkpoint), marker="qrobust_export.json", what="qrobust export")
    spec = _export_spec(opts, method_options)
    calibration = opts.calibration
    if isinstance(calibration, CalibrationOptions):  # the CLI's --calib-* settings: drawn before loading
        calibration = calibration_for(spec, checkpoint, calibration, opts.trust_remote_code)
    model = load_checkpoint(checkpoint, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code,
                            dtype=opts.dtype, device=opts.device)
    tok = load_tokenizer(checkpoint, opts.trust_remote_code)
    check_vocab(model, tok, checkpoint)  # the export carries this tokenizer: it must be the model's
    if isinstance(calibration, str):
        calibration = calibration_for(spec, checkpoint, None, opts.trust_remote_code)
    result = quantize_inplace(model, spec, calibration)
    check_exportable(result)
    report: dict[str, Any] = {"source": str(Path(checkpoint).resolve()), "label": spec.label}
    blocks = eval_blocks(checkpoint, n_blocks=opts.verify_blocks, trust_remote_code=opts.trust_remote_code) \
        if opts.verify_blocks else None
    if blocks is not None:
        report["loss_fake_quant"] = evaluate_loss(model, blocks, name=f"checkpoint '{checkpoint}' quantized as "
                                                                    f"{spec.label}").loss
    path = export_compressed_tensors(model, result, out, tok, extra={"source": report["source"]})
    report["out"] = str(path)
    if blocks is not None:
        report["loss_reloaded"] = _reloaded_loss(path, blocks, opts, spec)
        report["loss_diff"] = report["loss_reloaded"] - report["loss_fake_quant"]
    return report
