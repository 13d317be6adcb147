"""Layer-streamed evaluation: FP and quantized loss of a checkpoint from one pass over its decoder
blocks, holding one block's weights at a time.

The model is built on the ``meta`` device (no memory). Its embeddings, final norm and head are loaded
for real; every decoder block is then, in turn, read from the safetensors files onto the compute
device, run over the evaluation batches for the FP stream, quantized in place, run again over the
quantized stream, and dropped. Hidden states of both streams are carried from block to block. At the
end the model's own forward maps each stream's last hidden states to logits, with every decoder block
swapped for a stand-in that hands back the stored states, so embeddings, masks, final norm, head and
the loss are computed by exactly the code the in-memory path runs (``evaluate.evaluate_loss``): the
numbers are the same, as ``tests/test_layerwise.py`` checks.

RTN quantizes each block on its own. GPTQ (block-sequential, as in memory) also carries the calibration
set through the quantized blocks: block i's Hessians come from the outputs of quantized blocks < i,
computed by the very function the in-memory path uses (``quant.gptq.quantize_block``). AWQ is not
streamed yet.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .errors import CheckpointError, QrobustError
from .evaluate import LossResult, evaluate_loss
from .models import resolve_device, resolve_dtype, weight_safetensors
from .quant import QuantSpec, get_quantizer
from .quant.apply import select_linears, weight_error
from .quant.blocks import decoder_layers, first_block_inputs, next_inputs

STREAMABLE_METHODS = ("rtn", "gptq")


def _renamings(model: nn.Module) -> list[tuple[str, str]]:
    """(regex, replacement) pairs transformers applies to checkpoint keys when it loads this model (e.g.
    GPT-NeoX's ``embed_out.`` → ``lm_head.``); anything beyond plain renaming is refused."""
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping
    except ImportError:  # older transformers: keys are the module names
        return []
    pairs = []
    for conv in get_model_conversion_mapping(model) or []:
        if not isinstance(conv, WeightRenaming):
            raise CheckpointError(f"{type(model).__name__} converts its checkpoint tensors on load "
                                  f"({type(conv).__name__}); layer streaming supports models whose tensors are "
                                  "only renamed")
        for src, tgt in zip(conv.source_patterns, conv.target_patterns * len(conv.source_patterns)):
            pairs.append((src, tgt))
    return pairs


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, header) of a safetensors file: an 8-byte little-endian length,
    then that many bytes of JSON naming each tensor's dtype, shape and byte range."""
    import json
    import struct
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"'{path}' is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        try:
            head = json.loads(f.read(n))
        except ValueError:
            raise CheckpointError(f"'{path}' is not a safetensors file (bad header)") from None
    head.pop("__metadata__", None)
    return 8 + n, head


class WeightSource:
    """Tensors of a checkpoint's safetensors files by the model's parameter names, read on demand.

    Read with plain ``pread`` into a fresh buffer rather than through ``safetensors.safe_open``, whose
    memory map keeps every page it ever touched resident in this process: for a model streamed block
    by block that would grow to the whole file, which is what streaming is meant to avoid."""

    def __init__(self, folder: Path, model: nn.Module | None = None):
        import re
        files = weight_safetensors(folder)
        if not files:
            raise CheckpointError(f"'{folder}' has no *.safetensors weights; layer streaming reads safetensors only")
        renames = _renamings(model) if model is not None else []
        self.where: dict[str, tuple[Path, int, dict[str, Any]]] = {}
        for f in files:
            start, head = _header(f)
            for key, entry in head.items():
                name = key
                for src, tgt in renames:
                    name = re.sub(src, tgt, name)
                self.where[name] = (f, start, entry)

    def get(self, name: str) -> torch.Tensor:
        import os
        if name not in self.where:
            raise CheckpointError(f"tensor '{name}' is not in the checkpoint's safetensors files")
        path, start, entry = self.where[name]
        dtype = _ST_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"tensor '{name}' has dtype {entry['dtype']}, which layer streaming does not read")
        a, b = entry["data_offsets"]
        buf = bytearray(b - a)
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [buf], start + a)
        finally:
            os.close(fd)
        if got != b - a:
            raise CheckpointError(f"'{path}' is truncated: tensor '{name}' needs bytes {a}..{b} of its data section")
        t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        return t.reshape(entry["shape"])


def _materialize(module: nn.Module, prefix: str, source: WeightSource, device: torch.device, dtype: torch.dtype,
                 config: Any, skip: str | None = None) -> None:
    """Allocate ``module``'s parameters on ``device`` and fill them from ``source`` (names under
    ``prefix``); buffers the files do not hold (rotary frequencies) are rebuilt from the config.
    Submodules under ``skip`` (the decoder blocks) stay on meta."""
    for name, sub in module.named_modules():
        full = f"{prefix}{name}" if name else prefix.rstrip(".")
        if skip is not None and (full == skip or full.startswith(skip + ".")):
            continue
        own_p = dict(sub.named_parameters(recurse=False))
        own_b = dict(sub.named_buffers(recurse=False))
        if not own_p and not own_b:
            continue
        rebuilt = None
        for pname, p in own_p.items():
            key = f"{full}.{pname}" if full else pname
            if p.device.type != "meta":
                continue
            if key in source.where:
                t = source.get(key).to(device=device, dtype=dtype if p.is_floating_point() else p.dtype)
            else:
                continue  # tied weights: set after all loads
            setattr(sub, pname, nn.Parameter(t, requires_grad=False))
        for bname, b in own_b.items():
            key = f"{full}.{bname}" if full else bname
            if key in source.where:
                t = source.get(key).to(device=device)
            else:
                if rebuilt is None:
                    try:
                        rebuilt = type(sub)(config=config)
                    except Exception:
                        raise CheckpointError(f"buffer '{key}' is neither in the checkpoint nor rebuildable from "
                                              "the config; layer streaming supports gpt_neox and llama-style models"
                                              ) from None
                t = dict(rebuilt.named_buffers(recurse=False))[bname].to(device)
            sub.register_buffer(bname, t, persistent=bname not in getattr(sub, "_non_persistent_buffers_set", set()))


def _skeleton(folder: Path, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()


class _Replay(nn.Module):
    """Stands in for the first decoder block and returns the stored last hidden states, batch by batch;
    the remaining blocks pass their input through."""

    def __init__(self, states: list[torch.Tensor] | None, as_tuple: bool):
        super().__init__()
        self.states: Iterator[torch.Tensor] | None = iter(states) if states is not None else None
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = next(self.states) if self.states is not None else hidden_states
        return (out,) if self.as_tuple else out


@dataclass
class StreamedResult:
    fp: LossResult
    q: LossResult
    spec: QuantSpec
    layers: dict[str, dict[str, float]] = field(default_factory=dict)  # per quantized linear: rel_err, mse, numel
    block_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _selected(block: nn.Module, prefix: str, spec: QuantSpec) -> dict[str, nn.Linear]:
    return select_linears(block, spec.include, spec.exclude, prefix=prefix + ".", required=False)


def _quantize_block(block: nn.Module, prefix: str, spec: QuantSpec, calib: list[tuple[tuple, dict]] | None,
                    propagate: bool, source: WeightSource
                    ) -> tuple[dict[str, dict[str, float]], list[tuple[tuple, dict]] | None]:
    """Quantize one decoder block in place (its FP stream has already run), and return its per-layer
    errors and (GPTQ) the next block's calibration inputs: this quantized block's outputs. The FP weights
    for the errors are read back from the files one layer at a time, so no copy of the block is held."""
    layers = _selected(block, prefix, spec)
    info: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        if spec.method == "gptq":
            from .quant.gptq import _ieee_fp32, gptq_options, quantize_block
            with _ieee_fp32():
                calib = quantize_block(block, layers, calib, spec, gptq_options(dict(spec.options)), info,
                                       propagate=propagate)
        else:
            get_quantizer(spec.method).quantize_layers(block, layers, spec, None)
    stats = {}
    for n, m in layers.items():
        w0 = source.get(f"{n}.weight").to(m.weight.dtype)  # as the in-memory path saw it
        stats[n] = {**weight_error(w0, m.weight), **{k: v for k, v in info.get(n, {}).items() if k != "grid"}}
    return stats, calib


def streamed_losses(checkpoint: str | Path, spec: QuantSpec, blocks: torch.Tensor, batch_size: int = 8,
                    device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False,
                    progress: bool = False, calibration: torch.Tensor | None = None) -> StreamedResult:
    """FP and quantized loss of ``checkpoint`` on ``blocks`` ([n, T] token ids), one decoder block in
    memory at a time. Same numbers as loading the whole model and calling ``evaluate_loss`` twice.
    ``calibration`` ([n, T] token ids): for GPTQ, carried through the quantized blocks as in-memory
    sequential GPTQ carries it."""
    from tqdm.auto import tqdm

    if spec.method not in STREAMABLE_METHODS:
        raise QrobustError(f"layer streaming supports {', '.join(STREAMABLE_METHODS)} so far; '{spec.method}' "
                           "needs its own streamed path (not built yet): evaluate it in memory")
    get_quantizer(spec.method).check_options(dict(spec.options))
    calib_batch = None
    if spec.method == "gptq":
        from .quant.gptq import gptq_options
        opts = gptq_options(dict(spec.options))
        if not opts.sequential:
            raise QrobustError("streamed GPTQ is block-sequential; drop sequential=false (its whole-model FP "
                               "Hessians need the whole model)")
        if calibration is None:
            raise QrobustError("GPTQ needs calibration token blocks; pass calibration")
        calib_batch = opts.calib_batch_size
    t_all = time.perf_counter()
    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"'{folder}' is not a model folder: expected config.json and *.safetensors")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    model = _skeleton(folder, dt, trust_remote_code)
    source = WeightSource(folder, model)
    layers = decoder_layers(model)
    if layers is None:
        raise CheckpointError(f"'{folder}': no decoder block list found; layer streaming needs a decoder-only model")
    names = {id(m): n for n, m in model.named_modules()}
    layers_name = names[id(layers)]
    _materialize(model, "", source, dev, dt, model.config, skip=layers_name)
    if getattr(model.config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        out_emb = model.get_output_embeddings()
        if out_emb.weight.device.type == "meta":
            out_emb.weight = model.get_input_embeddings().weight
    leftover = [n for n, p in model.named_parameters() if p.device.type == "meta" and not n.startswith(layers_name)]
    if leftover:
        raise CheckpointError(f"'{folder}': parameter '{leftover[0]}' is missing from the safetensors files")
    batches = [b.to(dev) for b in torch.split(blocks, batch_size)]
    prefixes = [f"{layers_name}.{i}" for i in range(len(layers))]
    with_linears = [i for i, p in enumerate(prefixes) if _selected(layers[i], p, spec)]
    if not with_linears:
        raise QrobustError("no linear layers selected for quantization; check the include/exclude patterns")
    last = max(with_linears)
    with torch.no_grad():
        inputs_fp = first_block_inputs(model, layers[0], batches)
        inputs_q = list(inputs_fp)
        calib = (first_block_inputs(model, layers[0], [b.to(dev) for b in torch.split(calibration, calib_batch)])
                 if calib_batch else None)
        stats: dict[str, dict[str, float]] = {}
        block_seconds = []
        as_tuple = False
        for i in tqdm(range(len(layers)), desc="blocks", disable=not progress, leave=False):
            t0 = time.perf_counter()
            block = layers[i]
            _materialize(block, f"{layers_name}.{i}.", source, dev, dt, model.config)
            missing = [n for n, p in block.named_parameters() if p.device.type == "meta"]
            if missing:
                raise CheckpointError(f"'{folder}': parameter '{layers_name}.{i}.{missing[0]}' is missing from the "
                                      "safetensors files")
            outs_fp = [block(*a, **k) for a, k in inputs_fp]
            if i <= last:  # past the last selected linear the quantized model runs FP blocks
                st, calib = _quantize_block(block, prefixes[i], spec, calib, i < last, source)
                stats.update(st)
            outs_q = [block(*a, **k) for a, k in inputs_q]
            as_tuple = isinstance(outs_fp[0], (tuple, list))
            inputs_fp, inputs_q = next_inputs(outs_fp, inputs_fp), next_inputs(outs_q, inputs_q)
            del outs_fp, outs_q
            layers[i] = block.to_empty(device="meta")  # drop this block's weights
            block_seconds.append(time.perf_counter() - t0)
        results = []
        real = list(layers)
        try:
            for inputs in (inputs_fp, inputs_q):
                layers[0] = _Replay([a[0] for a, _ in inputs], as_tuple)
                for j in range(1, len(real)):
                    layers[j] = _Replay(None, as_tuple)
                results.append(evaluate_loss(model, blocks, batch_size))
        finally:
            for j, b in enumerate(real):
                layers[j] = b
    return StreamedResult(fp=results[0], q=results[1], spec=spec, layers=stats, block_seconds=block_seconds,
                          seconds=time.perf_counter() - t_all)


def describe(res: StreamedResult) -> dict[str, Any]:
    """A JSON-able summary (for the CLI)."""
    from .evaluate import degradation
    return {"label": res.spec.label, "loss_fp": res.fp.loss, "loss_q": res.q.loss,
            **{k: v for k, v in degradation(res.fp.loss, res.q.loss).items() if k in ("dq_rel", "dq_abs")},
            "n_tokens": res.fp.n_tokens, "blocks": len(res.block_seconds),
            "block_seconds_median": sorted(res.block_seconds)[len(res.block_seconds) // 2] if res.block_seconds else 0,
            "seconds": res.seconds}


__all__ = ["streamed_losses", "StreamedResult", "WeightSource", "describe"]
