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

Each block is quantized by the variant's quantizer (``Quantizer.quantize_block``, the quantizer
contract of ``quant/base.py``: this module never names a method). A calibrated variant also carries its
calibration set from block to block, as its ``calibration_flow`` says: ``quantized`` through the block
just quantized (block i is calibrated on the outputs of quantized blocks < i, as sequential GPTQ is in
memory), ``fp`` as the FP outputs the quantizer computed before changing the block (as AWQ is).
"""
from __future__ import annotations

import ctypes
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ....errors import QrobustError
from ....evaluate import LossResult, evaluate_loss
from ...base import BlockDone, BlockJob, Flow, Quantizer
from ...timing import calibrating, calibration_clock
from ...registry import QuantSpec, get_quantizer, quantizer_names
from ..act_hooks import check_act, needs_calibration
from ..in_memory import check_layers, select_linears, weight_error
from .act_stream import ActStream
from .hidden_states import HiddenStates, Tier, resolve_tier, state_bytes
from .block_weights import StreamedModel, WeightSource, check_tokens, load_outside_blocks, open_checkpoint



def streamable_methods() -> list[str]:
    """Registered quantizers that can be layer-streamed (``Quantizer.streamable``)."""
    return quantizer_names(streamable=True)


@dataclass(frozen=True)
class StreamSettings:
    """How a checkpoint is streamed (the rarer arguments of ``stream_checkpoint``, given as keywords):
    ``states``: where the carried hidden states live (auto|device|cpu|disk); ``states_dir``: the parent
    folder of the disk tier's files (default: the system temp folder)."""
    device: str = "auto"
    dtype: str = "float32"
    trust_remote_code: bool = False
    progress: bool = False
    states: str = "auto"
    states_dir: Path | None = None


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
    calibration_seconds: float = 0.0  # the part of quantize_seconds spent on calibration forwards

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
    load_seconds: float = 0.0  # reading the blocks' weights from the files (every read, all streams)


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
    """A variant's running state: its quantizer and calibration flow, its stream, its calibration
    stream, the last block it quantizes."""
    spec: QuantSpec
    quantizer: Quantizer
    flow: Flow
    states: HiddenStates
    calib: HiddenStates | None
    last: int
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    quantize_seconds: float = 0.0
    eval_seconds: float = 0.0
    calibration_seconds: float = 0.0
    as_tuple: bool = False
    act: ActStream | None = None  # activation / KV quantization and SmoothQuant (act_stream.py)


def _carry_calibration(v: _Variant, block: nn.Module, done: BlockDone) -> None:
    """Move ``v``'s calibration stream past ``block`` as its flow says (unless the quantizer already sent
    the quantized block's outputs)."""
    assert v.calib is not None
    if v.flow == "quantized":
        if not done.sent_outputs:
            with calibrating():
                v.calib.advance(block)
    elif done.fp_outputs is not None:
        v.calib.put_all(done.fp_outputs)
    else:
        raise QrobustError(f"quantizer '{v.spec.method}' calibrates on FP inputs but its quantize_block gave no FP "
                           "outputs for the next block")


def _quantize_block(block: nn.Module, prefix: str, v: _Variant, i: int, source: WeightSource) -> None:
    """Quantize one decoder block in place for variant ``v`` (its FP stream has already run), record its
    per-layer errors, and move ``v``'s calibration stream past it. The FP weights for the errors are read
    back from the files one layer at a time, so no copy of the block is held."""
    spec = v.spec
    layers = _selected(block, prefix, spec)
    dtypes = {n: lin.weight.dtype for n, lin in layers.items()}
    with torch.no_grad():
        smoothed = v.act.before_quantize(block, prefix, layers) if v.act is not None else None
    original = smoothed.__getitem__ if smoothed else lambda n: source.get(f"{n}.weight").to(dtypes[n])
    calib = v.calib
    sink = None
    if calib is not None and v.flow == "quantized" and i < v.last:
        sink = calib.put_output
    job = BlockJob(block, layers, prefix + ".", calib, original=original, outputs=sink)
    with torch.no_grad():
        done = v.quantizer.quantize_block(job, spec)
        if i < v.last and v.flow != "none":
            _carry_calibration(v, block, done)
        if v.act is not None:
            v.act.after_quantize(block, prefix, layers)
    for n, m in layers.items():
        w0 = original(n)  # as the in-memory path saw it (after SmoothQuant's fold, when there is one)
        v.layers[n] = {**weight_error(w0, m.weight), **{k: x for k, x in done.info.get(n, {}).items() if k != "grid"}}


def check_streamable(specs: list[QuantSpec]) -> dict[QuantSpec, int]:
    """Refuse what cannot be streamed before any work; the calibration batch size of each calibrated variant."""
    sizes = {}
    for spec in specs:
        quantizer, options = get_quantizer(spec.method), dict(spec.options)
        if not quantizer.streamable:
            raise QrobustError(f"layer streaming supports {', '.join(streamable_methods())} so far; '{spec.method}' "
                               "needs its own streamed path (not built yet): evaluate it in memory")
        quantizer.check_options(options)
        problem = quantizer.stream_problem(options)
        if problem:
            raise QrobustError(problem)
        if quantizer.calibration_flow(options) != "none":
            sizes[spec] = quantizer.calibration_batch_size(options)
    return sizes


def _last_blocks(m: StreamedModel, specs: list[QuantSpec]) -> dict[QuantSpec, int]:
    """Per variant, the last block holding a selected linear (past it the quantized model runs FP blocks)."""
    lasts = {}
    for spec in specs:
        selected = [_selected(m.layers[i], p, spec) for i, p in enumerate(m.prefixes)]
        for layers in selected:
            check_layers(spec, layers)
        with_linears = [i for i, layers in enumerate(selected) if layers]
        if not with_linears:
            raise QrobustError(f"{spec.label}: no linear layers selected for quantization; check the include/exclude "
                               "patterns")
        lasts[spec] = len(m.layers) - 1 if spec.kv else max(with_linears)  # the KV cache of every block
    return lasts


def _variant_step(m: StreamedModel, i: int, v: _Variant, dirty: bool) -> None:
    """Block ``i`` for one variant: (re)load its FP weights if needed, quantize it, run the variant's stream."""
    if dirty:
        m.load_block(i)
    block = m.layers[i]
    if i <= v.last:  # past the last selected linear the quantized model runs FP blocks
        tq = time.perf_counter()
        with calibration_clock() as clock:
            _quantize_block(block, m.prefixes[i], v, i, m.source)
        v.quantize_seconds += time.perf_counter() - tq
        v.calibration_seconds += clock.seconds
    te = time.perf_counter()
    with v.act.live(block, m.prefixes[i], _selected(block, m.prefixes[i], v.spec)) if v.act else nullcontext():
        v.as_tuple = v.states.advance(block)
    v.eval_seconds += time.perf_counter() - te
    if v.act is not None and i >= v.last:
        v.act.close()
    if v.calib is not None and i >= v.last:
        v.calib.close()
        v.calib = None
    _return_freed_memory()


def _run_blocks(m: StreamedModel, fp_states: HiddenStates | None, variants: list[_Variant], progress: bool
                ) -> tuple[list[float], bool, float]:
    """Every block once: FP stream first, then each variant quantizes and runs its own stream; the time
    per block, whether blocks answer with tuples, and the FP stream's time."""
    from tqdm.auto import tqdm

    block_seconds: list[float] = []
    fp_tuple, fp_seconds = False, 0.0
    for i in tqdm(range(len(m.layers)), desc="blocks", disable=not progress, leave=False):
        t0 = time.perf_counter()
        dirty = True  # the block as held is not (yet) the FP block
        if fp_states is not None:
            block = m.load_block(i)
            tf = time.perf_counter()
            fp_tuple = fp_states.advance(block)
            fp_seconds += time.perf_counter() - tf
            dirty = False
        for v in variants:
            _variant_step(m, i, v, dirty)
            dirty = i <= v.last
        m.layers[i] = m.layers[i].to_empty(device="meta")  # drop this block's weights
        _return_freed_memory()
        block_seconds.append(time.perf_counter() - t0)
    return block_seconds, fp_tuple, fp_seconds


def stream_checkpoint(checkpoint: str | Path, specs: list[QuantSpec], blocks: torch.Tensor, batch_size: int = 8,
                      calibration: dict[QuantSpec, torch.Tensor] | None = None, fp: bool = True,
                      **settings: Any) -> StreamedRun:
    """FP loss (when ``fp``) and the quantized loss of every variant in ``specs``, on ``blocks`` ([n, T]
    token ids), one decoder block in memory at a time: the numbers of loading the whole model and calling
    ``evaluate_loss`` on it FP and under each variant. ``calibration``: token blocks per calibrated
    variant. ``settings``: the fields of ``StreamSettings`` (device, dtype, trust_remote_code, progress,
    states, states_dir)."""
    s = StreamSettings(**settings)
    calibration = calibration or {}
    calib_batch = check_streamable(specs)
    for spec in calib_batch:
        if calibration.get(spec) is None:
            raise QrobustError(f"{spec.method.upper()} needs calibration token blocks; pass calibration")
    for spec in specs:
        check_act(spec, calibration.get(spec))
        if needs_calibration(spec) and calibration.get(spec) is None:
            raise QrobustError(f"{spec.label} needs calibration token blocks (smoothquant); pass calibration")
    t_all = time.perf_counter()
    m = open_checkpoint(checkpoint, s.device, s.dtype, s.trust_remote_code)
    check_tokens(m, blocks, calibration, [s for s in specs if needs_calibration(s)])
    load_outside_blocks(m)
    lasts = _last_blocks(m, specs)
    hidden = m.model.get_input_embeddings().weight.shape[1]
    need = state_bytes(blocks.numel(), hidden, m.dt) * (int(fp) + len(specs)) + sum(
        state_bytes(calibration[c].numel(), hidden, m.dt) * (int(c in calib_batch) + ActStream.streams(c))
        for c in specs if needs_calibration(c))
    tier = resolve_tier(s.states, need, m.dev)
    fp_states: HiddenStates | None = None
    variants: list[_Variant] = []
    try:
        with torch.no_grad():
            first = m.stream_of(blocks, batch_size, tier, s.states_dir)
            fp_states = first if fp else None
            for k, spec in enumerate(specs):
                states_k = first if (k == len(specs) - 1 and not fp) else first.copy()
                calib = m.stream_of(calibration[spec], calib_batch[spec], tier, s.states_dir) \
                    if spec in calib_batch else None
                quantizer = get_quantizer(spec.method)
                variants.append(_Variant(spec, quantizer, quantizer.calibration_flow(dict(spec.options)), states_k,
                                         calib, lasts[spec]))
                variants[-1].act = ActStream.start(m, spec, calibration.get(spec), tier, s.states_dir)
            block_seconds, fp_tuple, fp_seconds = _run_blocks(m, fp_states, variants, s.progress)
            fp_loss, out = _losses(m, fp_states, fp_tuple, variants, blocks, batch_size)
            if fp_loss is not None:
                fp_loss.seconds += fp_seconds  # the FP stream through the blocks, besides its head
    finally:
        for st in [fp_states] + [v.states for v in variants] + [v.calib for v in variants] + [v.act for v in variants]:
            if st is not None:
                st.close()
    return StreamedRun(fp=fp_loss, variants=out, tier=tier, block_seconds=block_seconds,
                       seconds=time.perf_counter() - t_all, load_seconds=m.read_seconds)


def _losses(m: StreamedModel, fp_states: HiddenStates | None, fp_tuple: bool, variants: list[_Variant],
            blocks: torch.Tensor, batch_size: int) -> tuple[LossResult | None, list[VariantLosses]]:
    """The FP loss (if streamed) and every variant's, from each stream's last hidden states."""
    folder = m.folder
    fp_loss = (_head_losses(m.model, m.layers, fp_states, fp_tuple, blocks, batch_size, f"checkpoint '{folder}'")
               if fp_states else None)
    out = []
    for v in variants:
        te = time.perf_counter()
        q = _head_losses(m.model, m.layers, v.states, v.as_tuple, blocks, batch_size,
                         f"checkpoint '{folder}' quantized as {v.spec.label}")
        out.append(VariantLosses(v.spec, q, v.layers, v.quantize_seconds, v.eval_seconds + time.perf_counter() - te,
                                 v.calibration_seconds))
    return fp_loss, out


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
                    calibration: torch.Tensor | None = None, **settings: Any) -> StreamedResult:
    """FP and quantized loss of ``checkpoint`` on ``blocks`` for one variant (``stream_checkpoint``;
    ``settings`` as there)."""
    run = stream_checkpoint(checkpoint, [spec], blocks, batch_size,
                            {spec: calibration} if calibration is not None else None, fp=True, **settings)
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
