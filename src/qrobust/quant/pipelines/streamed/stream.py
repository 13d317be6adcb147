"""Layer-streamed evaluation: FP and quantized losses of a checkpoint from one pass over its decoder
blocks, holding one block's weights at a time.

The model is built on the ``meta`` device (no memory). Its embeddings, final norm and head are loaded
for real; every decoder block is then, in turn, read from the safetensors files onto the compute
device, run over the evaluation batches for the FP stream, and, for each quantization variant, quantized
in place and run over that variant's stream (re-read from the files between variants), then dropped.
The hidden states of every stream are carried from block to block, on the device, in host memory or on
disk (``states.py``). At the end the model's own forward maps each stream's last hidden states to
logits, with every decoder block swapped for a stand-in that hands back the stored states, so
embeddings, masks, final norm, head and the loss are computed by exactly the code the in-memory path
runs (``evaluate.evaluate_loss``): the numbers are the same, as ``tests/test_layerwise.py`` checks.

RTN quantizes each block on its own. GPTQ (block-sequential, as in memory) also carries the calibration
set through the quantized blocks: block i's Hessians come from the outputs of quantized blocks < i,
computed by the very function the in-memory path uses (``quant.gptq.quantize_block``). AWQ carries its
calibration set through the FP blocks, as in memory (``quant.awq.AWQ.quantize_block``).
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ....checks import check_seq_len, check_tensors, check_token_ids
from ....errors import CheckpointError, QrobustError
from ....evaluate import LossResult, evaluate_loss
from ....models import resolve_device, resolve_dtype
from ... import QuantSpec, get_quantizer
from ..in_memory import select_linears, weight_error
from ..blocks import decoder_layers, first_block_inputs
from .hidden_states import HiddenStates, Tier, resolve_tier, state_bytes
from .block_weights import WeightSource, materialize, skeleton

STREAMABLE_METHODS = ("rtn", "gptq", "awq")


class _Replay(nn.Module):
    """Stands in for the first decoder block and returns the stored last hidden states, batch by batch;
    the remaining blocks pass their input through."""

    def __init__(self, states: Iterator[torch.Tensor] | None, as_tuple: bool):
        super().__init__()
        self.states = states
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = next(self.states) if self.states is not None else hidden_states
        return (out,) if self.as_tuple else out


@dataclass
class VariantLosses:
    """One variant's quantized loss and per-layer weight errors, with its share of the time."""
    spec: QuantSpec
    q: LossResult
    layers: dict[str, dict[str, float]] = field(default_factory=dict)  # per quantized linear: rel_err, mse, numel
    quantize_seconds: float = 0.0
    eval_seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        from ..in_memory import QuantResult
        return QuantResult(spec=self.spec, layers=self.layers).summary()


@dataclass
class StreamedRun:
    """FP loss (None when not asked for) and every variant's losses from one pass over the blocks."""
    fp: LossResult | None
    variants: list[VariantLosses]
    tier: Tier
    block_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class StreamedResult:
    """One variant's FP and quantized losses (``streamed_losses``)."""
    fp: LossResult
    q: LossResult
    spec: QuantSpec
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    block_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tier: Tier = "device"


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS. Streaming frees a block's weights and a quantizer's
    temporaries at every step; glibc keeps such pages mapped, and the process's peak grows with them."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _selected(block: nn.Module, prefix: str, spec: QuantSpec) -> dict[str, nn.Linear]:
    return select_linears(block, spec.include, spec.exclude, prefix=prefix + ".", required=False)


@dataclass
class _Variant:
    """A variant's running state: its stream, its calibration stream, the last block it quantizes."""
    spec: QuantSpec
    states: HiddenStates
    calib: HiddenStates | None
    last: int
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    quantize_seconds: float = 0.0
    eval_seconds: float = 0.0
    as_tuple: bool = False


def _quantize_block(block: nn.Module, prefix: str, v: _Variant, i: int, source: WeightSource) -> None:
    """Quantize one decoder block in place for variant ``v`` (its FP stream has already run), record its
    per-layer errors, and move ``v``'s calibration stream past it (GPTQ: through the quantized block; AWQ:
    through the FP block, as the in-memory paths do). The FP weights for the errors are read back from
    the files one layer at a time, so no copy of the block is held."""
    spec = v.spec
    layers = _selected(block, prefix, spec)
    info: dict[str, dict[str, Any]] = {}
    more = i < v.last
    with torch.no_grad():
        if spec.method == "gptq":
            from ...methods.gptq import _ieee_fp32, gptq_options, quantize_block
            with _ieee_fp32():
                quantize_block(block, layers, v.calib, spec, gptq_options(dict(spec.options)), info, propagate=False)
            if more:
                v.calib.advance(block)
        elif spec.method == "awq":
            from ...methods.awq import AWQ, awq_options
            local = {n[len(prefix) + 1:]: lin for n, lin in layers.items()}
            dtypes = {n: lin.weight.dtype for n, lin in local.items()}
            _, fp_outputs = AWQ().quantize_block(  # FP weights for the errors re-read from the files, as below
                block, local, v.calib, spec, awq_options(dict(spec.options)), info, prefix + ".",
                original=lambda n: source.get(f"{prefix}.{n}.weight").to(dtypes[n]))
            if more:
                v.calib.put_all(fp_outputs)
        else:
            get_quantizer(spec.method).quantize_layers(block, layers, spec, None)
    for n, m in layers.items():
        w0 = source.get(f"{n}.weight").to(m.weight.dtype)  # as the in-memory path saw it
        v.layers[n] = {**weight_error(w0, m.weight), **{k: x for k, x in info.get(n, {}).items() if k != "grid"}}


def check_streamable(specs: list[QuantSpec]) -> dict[QuantSpec, int]:
    """Refuse what cannot be streamed before any work; the calibration batch size of each calibrated variant."""
    sizes = {}
    for spec in specs:
        if spec.method not in STREAMABLE_METHODS:
            raise QrobustError(f"layer streaming supports {', '.join(STREAMABLE_METHODS)} so far; '{spec.method}' "
                               "needs its own streamed path (not built yet): evaluate it in memory")
        get_quantizer(spec.method).check_options(dict(spec.options))
        if spec.method == "gptq":
            from ...methods.gptq import gptq_options
            opts = gptq_options(dict(spec.options))
            if not opts.sequential:
                raise QrobustError("streamed GPTQ is block-sequential; drop sequential=false (its whole-model FP "
                                   "Hessians need the whole model)")
            sizes[spec] = opts.calib_batch_size
        elif spec.method == "awq":
            from ...methods.awq import awq_options
            sizes[spec] = awq_options(dict(spec.options)).calib_batch_size
    return sizes


def stream_checkpoint(checkpoint: str | Path, specs: list[QuantSpec], blocks: torch.Tensor, batch_size: int = 8,
                      device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False,
                      progress: bool = False, calibration: dict[QuantSpec, torch.Tensor] | None = None,
                      fp: bool = True, states: str = "auto", states_dir: Path | None = None) -> StreamedRun:
    """FP loss (when ``fp``) and the quantized loss of every variant in ``specs``, on ``blocks`` ([n, T]
    token ids), one decoder block in memory at a time: the numbers of loading the whole model and calling
    ``evaluate_loss`` on it FP and under each variant. ``calibration``: token blocks per calibrated
    variant (GPTQ, AWQ). ``states``: where the carried hidden states live (auto|device|cpu|disk);
    ``states_dir``: the parent folder of the disk tier's files (default: the system temp folder)."""
    from tqdm.auto import tqdm

    calibration = calibration or {}
    calib_batch = check_streamable(specs)
    for spec in calib_batch:
        if calibration.get(spec) is None:
            raise QrobustError(f"{spec.method.upper()} needs calibration token blocks; pass calibration")
    t_all = time.perf_counter()
    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"'{folder}' is not a model folder: expected config.json and *.safetensors")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    model = skeleton(folder, dt, trust_remote_code)
    source = WeightSource(folder, model)
    check_tensors(folder, model, source.where)  # the same check as an in-memory load, before any work
    rows = model.get_input_embeddings().weight.shape[0]
    check_seq_len(model.config, blocks.shape[1], str(folder))
    check_token_ids(blocks, rows, str(folder))
    for spec in calib_batch:
        check_seq_len(model.config, calibration[spec].shape[1], str(folder), "calibration sample length",
                      "--calib-seq-len (calibration.seq_len)")
        check_token_ids(calibration[spec], rows, str(folder))
    layers = decoder_layers(model)
    if layers is None:
        raise CheckpointError(f"'{folder}': no decoder block list found; layer streaming needs a decoder-only model")
    layers_name = {id(m): n for n, m in model.named_modules()}[id(layers)]
    materialize(model, "", source, dev, dt, model.config, skip=layers_name)
    if getattr(model.config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        out_emb = model.get_output_embeddings()
        if out_emb.weight.device.type == "meta":
            out_emb.weight = model.get_input_embeddings().weight
    leftover = [n for n, p in model.named_parameters() if p.device.type == "meta" and not n.startswith(layers_name)]
    if leftover:
        raise CheckpointError(f"'{folder}': parameter '{leftover[0]}' is missing from the safetensors files")
    prefixes = [f"{layers_name}.{i}" for i in range(len(layers))]
    lasts = {}
    for spec in specs:
        with_linears = [i for i, p in enumerate(prefixes) if _selected(layers[i], p, spec)]
        if not with_linears:
            raise QrobustError(f"{spec.label}: no linear layers selected for quantization; check the include/exclude "
                               "patterns")
        lasts[spec] = max(with_linears)
    hidden = model.get_input_embeddings().weight.shape[1]
    need = state_bytes(blocks.numel(), hidden, dt) * (int(fp) + len(specs)) + sum(
        state_bytes(calibration[s].numel(), hidden, dt) for s in calib_batch)
    tier = resolve_tier(states, need, dev)

    def stream_of(tokens: torch.Tensor, size: int) -> HiddenStates:
        """The first block's inputs, batch by batch, into a stream of the chosen tier."""
        out = HiddenStates(tier, dev, states_dir)
        for b in torch.split(tokens, size):
            ((args, kwargs),) = first_block_inputs(model, layers[0], [b.to(dev)])
            out.append(args, kwargs)
        return out

    fp_states: HiddenStates | None = None
    variants: list[_Variant] = []
    block_seconds: list[float] = []
    try:
        with torch.no_grad():
            first = stream_of(blocks, batch_size)
            fp_states = first if fp else None
            for k, spec in enumerate(specs):
                states_k = first if (k == len(specs) - 1 and not fp) else first.copy()
                calib = stream_of(calibration[spec], calib_batch[spec]) if spec in calib_batch else None
                variants.append(_Variant(spec, states_k, calib, lasts[spec]))
            fp_tuple = False
            for i in tqdm(range(len(layers)), desc="blocks", disable=not progress, leave=False):
                t0 = time.perf_counter()
                block, prefix = layers[i], prefixes[i]
                dirty = True  # the block as held is not (yet) the FP block
                if fp_states is not None:
                    _load_block(block, prefix, source, dev, dt, model.config, folder)
                    dirty = False
                    fp_tuple = fp_states.advance(block)
                for v in variants:
                    if dirty:
                        _load_block(block, prefix, source, dev, dt, model.config, folder)
                        dirty = False
                    if i <= v.last:  # past the last selected linear the quantized model runs FP blocks
                        tq = time.perf_counter()
                        _quantize_block(block, prefix, v, i, source)
                        v.quantize_seconds += time.perf_counter() - tq
                        dirty = True
                    te = time.perf_counter()
                    v.as_tuple = v.states.advance(block)
                    v.eval_seconds += time.perf_counter() - te
                    if v.calib is not None and i >= v.last:
                        v.calib.close()
                        v.calib = None
                    _return_freed_memory()
                layers[i] = block.to_empty(device="meta")  # drop this block's weights
                _return_freed_memory()
                block_seconds.append(time.perf_counter() - t0)
            fp_loss = (_head_losses(model, layers, fp_states, fp_tuple, blocks, batch_size, f"checkpoint '{folder}'")
                       if fp_states else None)
            out = []
            for v in variants:
                te = time.perf_counter()
                q = _head_losses(model, layers, v.states, v.as_tuple, blocks, batch_size,
                                 f"checkpoint '{folder}' quantized as {v.spec.label}")
                out.append(VariantLosses(v.spec, q, v.layers, v.quantize_seconds,
                                         v.eval_seconds + time.perf_counter() - te))
    finally:
        for s in [fp_states] + [v.states for v in variants] + [v.calib for v in variants]:
            if s is not None:
                s.close()
    return StreamedRun(fp=fp_loss, variants=out, tier=tier, block_seconds=block_seconds,
                       seconds=time.perf_counter() - t_all)


def _load_block(block: nn.Module, prefix: str, source: WeightSource, dev: torch.device, dt: torch.dtype,
                config: Any, folder: Path) -> None:
    """The block's FP weights from the files, replacing whatever it holds."""
    if any(p.device.type != "meta" for p in block.parameters()):
        block.to_empty(device="meta")
    materialize(block, prefix + ".", source, dev, dt, config)
    missing = [n for n, p in block.named_parameters() if p.device.type == "meta"]
    if missing:
        raise CheckpointError(f"'{folder}': parameter '{prefix}.{missing[0]}' is missing from the safetensors files")


def _head_losses(model: nn.Module, layers: nn.ModuleList, states: HiddenStates, as_tuple: bool,
                 blocks: torch.Tensor, batch_size: int, name: str) -> LossResult:
    """The loss of a stream's last hidden states through the model's own final norm, head and loss."""
    real = list(layers)
    try:
        layers[0] = _Replay((states.hidden(j) for j in range(len(states))), as_tuple)
        for j in range(1, len(real)):
            layers[j] = _Replay(None, as_tuple)
        return evaluate_loss(model, blocks, batch_size, name=name)
    finally:
        for j, b in enumerate(real):
            layers[j] = b


def streamed_losses(checkpoint: str | Path, spec: QuantSpec, blocks: torch.Tensor, batch_size: int = 8,
                    device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False,
                    progress: bool = False, calibration: torch.Tensor | None = None, states: str = "auto",
                    states_dir: Path | None = None) -> StreamedResult:
    """FP and quantized loss of ``checkpoint`` on ``blocks`` for one variant (``stream_checkpoint``)."""
    run = stream_checkpoint(checkpoint, [spec], blocks, batch_size, device, dtype, trust_remote_code, progress,
                            {spec: calibration} if calibration is not None else None, fp=True, states=states,
                            states_dir=states_dir)
    (v,) = run.variants
    assert run.fp is not None
    return StreamedResult(fp=run.fp, q=v.q, spec=spec, layers=v.layers, block_seconds=run.block_seconds,
                          seconds=run.seconds, tier=run.tier)


def describe(res: StreamedResult) -> dict[str, Any]:
    """A JSON-able summary (for the CLI)."""
    from ....evaluate import degradation
    return {"label": res.spec.label, "loss_fp": res.fp.loss, "loss_q": res.q.loss,
            **{k: v for k, v in degradation(res.fp.loss, res.q.loss).items() if k in ("dq_rel", "dq_abs")},
            "n_tokens": res.fp.n_tokens, "blocks": len(res.block_seconds), "states": res.tier,
            "block_seconds_median": sorted(res.block_seconds)[len(res.block_seconds) // 2] if res.block_seconds else 0,
            "seconds": res.seconds}
