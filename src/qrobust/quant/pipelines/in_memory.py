"""Apply a quantizer to a model without ever silently changing the FP model.

``quantized(model, spec)`` is a context manager: it keeps the original weights of the selected linears,
quantizes them in place, and restores them on exit (memory: one copy of the linear weights).
``quantize(model, ...)`` returns a quantized deep copy and leaves ``model`` untouched.
"""
from __future__ import annotations

import copy
import fnmatch
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ...errors import QrobustError
from ..calibration import CalibrationSet, tokens_of
from ..timing import calibration_clock
from ..formats.grid import GroupSizeError, LayerGrid
from ..registry import QuantSpec, get_quantizer
from .act_hooks import act_calibration_batch, activations_quantized, check_act, needs_calibration, smooth_alpha
from .smoothquant import smooth_model, touched as smoothing_params


@dataclass
class QuantResult:
    spec: QuantSpec
    layers: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {rel_err, mse, numel, ...}
    seconds: float = 0.0
    calibration_seconds: float = 0.0  # the part of ``seconds`` spent on calibration forwards (``timing.py``)
    # name -> the grid the quantizer used (quantizers that record one, ``records_grid``), for export
    grids: dict[str, LayerGrid] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, float]:
        if not self.layers:
            return {"n_layers": 0}
        rel = [v["rel_err"] for v in self.layers.values()]
        num = sum(v["numel"] for v in self.layers.values())
        sq = sum(v["mse"] * v["numel"] for v in self.layers.values())
        return {"n_layers": len(rel), "rel_err_mean": sum(rel) / len(rel), "rel_err_max": max(rel),
                "weight_mse": sq / num}


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_linears(model: nn.Module, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                   prefix: str = "", required: bool = True) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` except the LM head (output embeddings), filtered by glob patterns on the name.

    ``include`` (if given) keeps only matching names; ``exclude`` then drops matching ones. ``prefix``:
    the module's own name in its model (one decoder block of a streamed model), so patterns see full
    names; ``required=False`` allows an empty selection.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out: dict[str, nn.Linear] = {}
    for name, mod in model.named_modules():
        name = prefix + name
        if not isinstance(mod, nn.Linear) or mod is head:
            continue
        if include and not _matches(name, include):
            continue
        if exclude and _matches(name, exclude):
            continue
        out[name] = mod
    if not out and required:
        raise QrobustError("no linear layers selected for quantization; check the include/exclude patterns")
    return out


def check_layers(spec: QuantSpec, layers: dict[str, nn.Linear]) -> None:
    """Refuse a variant whose weight format cannot quantize one of ``layers`` (a block that does not divide
    the layer's width, a group wider than it), naming the first such layer, before any weight changes."""
    fmt = spec.number_format()
    for name, lin in layers.items():
        problem = fmt.problem(lin.in_features)
        if problem:
            raise GroupSizeError(f"{spec.label}: layer '{name}': {problem}")



def _calibration_tokens(model: nn.Module, spec: QuantSpec, calibration: torch.Tensor | CalibrationSet | None
                        ) -> torch.Tensor | None:
    """The calibration tokens ``spec`` needs (its method's, static activation scales', SmoothQuant's),
    refused (one line) when missing or longer than the model's positions; None when it needs none."""
    if not needs_calibration(spec):
        return None
    if calibration is None:
        raise QrobustError(f"{spec.label} needs calibration data (method '{spec.method}', static activation / KV "
                           "scales or smoothquant); pass calibration blocks")
    tokens = tokens_of(calibration)
    if tokens is not None and tokens.ndim == 2:  # beyond the model's positions its activations are not its own
        from ...checks import check_seq_len
        config = getattr(model, "config", None)
        check_seq_len(config, tokens.shape[1], getattr(config, "_name_or_path", "") or spec.label,
                      "calibration sample length", "--calib-seq-len (calibration.seq_len)")
    return tokens


def _apply(model: nn.Module, spec: QuantSpec, calibration: torch.Tensor | CalibrationSet | None
           ) -> tuple[QuantResult, tuple[dict, dict, dict], dict[str, nn.Linear]]:
    """Quantize the selected linears in place (SmoothQuant-folded first, when asked); return the result
    and what restores the FP model."""
    quantizer = get_quantizer(spec.method)
    tokens = _calibration_tokens(model, spec, calibration)
    check_act(spec, tokens)
    alpha = smooth_alpha(spec)
    layers = select_linears(model, spec.include, spec.exclude)
    check_layers(spec, layers)
    originals = {n: lin.weight.detach().clone() for n, lin in layers.items()}
    touched = {**quantizer.touched_params(model, layers, spec), **(smoothing_params(model, layers) if alpha else {})}
    others = {n: t.detach().clone() for n, t in touched.items()}
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), calibration_clock() as clock:
            if alpha:
                assert tokens is not None
                smooth_model(model, layers, tokens, alpha, act_calibration_batch(spec))
            before = {n: lin.weight.detach().clone() for n, lin in layers.items()} if alpha else originals
            # a smoothed model is not the FP model a CalibrationSet's memo belongs to: share nothing
            info = quantizer.quantize_layers(model, layers, spec, tokens if alpha else calibration)
    except BaseException:
        _restore(layers, originals, touched, others)
        raise
    result = QuantResult(spec=spec, seconds=time.perf_counter() - t0, calibration_seconds=clock.seconds)
    for n, lin in layers.items():
        grid = info.get(n, {}).pop("grid", None)
        if grid is not None:
            result.grids[n] = grid
        # against the weights the method quantized (after SmoothQuant's fold, when there is one)
        result.layers[n] = {**weight_error(before[n], lin.weight), **info.get(n, {})}
    return result, (originals, touched, others), layers


def weight_error(w0: torch.Tensor, w: torch.Tensor) -> dict[str, float]:
    """How far quantized weights ``w`` are from the originals ``w0``: relative Frobenius error, MSE, size."""
    w0 = w0.detach().float()
    d = w.detach().float() - w0
    return {"rel_err": float(d.norm() / w0.norm().clamp_min(1e-30)), "mse": float(d.pow(2).mean()),
            "numel": w0.numel()}


def _restore(layers: dict[str, nn.Linear], originals: dict[str, torch.Tensor],
             touched: dict[str, torch.Tensor] | None = None, others: dict[str, torch.Tensor] | None = None) -> None:
    with torch.no_grad():
        for n, lin in layers.items():
            lin.weight.copy_(originals[n])
        for n, t in (touched or {}).items():
            t.copy_(others[n])


def quantize_inplace(model: nn.Module, spec: QuantSpec, calibration: torch.Tensor | CalibrationSet | None = None
                     ) -> QuantResult:
    """Quantize ``model`` in place for good (no FP weights kept back): for export, where the model is
    converted right after."""
    return _apply(model, spec, calibration)[0]


@contextmanager
def quantized(model: nn.Module, spec: QuantSpec, calibration: torch.Tensor | CalibrationSet | None = None
              ) -> Iterator[QuantResult]:
    """Quantize ``model`` in place for the duration of the block; the FP weights come back on exit.
    With ``spec.act`` / ``spec.kv``, linear inputs and the KV cache are fake-quantized for the duration
    too (hooks, removed on exit; static scales calibrated first on ``calibration``).

    ``calibration``: token ids [n, seq_len], or a CalibrationSet to share FP-only work between the
    variants of this model."""
    result, saved, layers = _apply(model, spec, calibration)
    try:
        with calibration_clock() as clock, activations_quantized(model, layers, spec, tokens_of(calibration)):
            result.seconds += clock.seconds  # entering observed any static activation / KV scales
            result.calibration_seconds += clock.seconds
            yield result
    finally:
        _restore(layers, *saved)


def quantize(model: nn.Module, method: str = "rtn", bits: int = 4, group_size: int = 128, sym: bool = True,
             calibration: torch.Tensor | None = None, **options: Any) -> tuple[nn.Module, QuantResult]:
    """A fake-quantized copy of ``model`` and its per-layer weight errors; ``model`` itself is unchanged.

    Keywords ``include`` / ``exclude`` (glob patterns on linear names) select the layers; ``format`` names a
    number format (``nvfp4``, ``w8a8-fp8`` …) in place of bits / group size / sym; every other keyword is an
    option of the method (e.g. ``damp=0.01`` for GPTQ)."""
    include, exclude = tuple(options.pop("include", ())), tuple(options.pop("exclude", ()))
    fmt = options.pop("format", "")
    spec = QuantSpec(method=method, bits=bits, group_size=group_size, sym=sym, include=include,
                     exclude=exclude, options=tuple(sorted(options.items())), format=fmt)
    qmodel = copy.deepcopy(model)
    result, _, _ = _apply(qmodel, spec, calibration)
    return qmodel, result
