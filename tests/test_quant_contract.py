"""The quantizer contract (quant/base.py): a quantizer registered from outside runs through the in-memory
and the layer-streamed pipeline without either naming it; the streamed pipeline carries calibration as
the quantizer's flow says; what can stream or be exported is read from the contract; registries (methods,
grids, AWQ layouts) refuse unknown names in one line and take new entries."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn

from qrobust.errors import ConfigError, QrobustError
from qrobust.evaluate import evaluate_loss
from qrobust.models import build_model, load_checkpoint
from qrobust.quant import QUANTIZERS, BlockDone, BlockJob, QuantSpec, Quantizer, get_quantizer, quantized
from qrobust.quant import register_quantizer
from qrobust.quant.export import check_spec
from qrobust.quant.formats.registry import GRIDS, Grid, UnknownGridError, get_grid, register_grid
from qrobust.quant.methods.awq import awq_block
from qrobust.quant.methods.awq_mappings import MAPPINGS, Mapping, get_layout, layout_of, register_mapping
from qrobust.quant.methods.awq_options import awq_options
from qrobust.quant.pipelines.streamed import check_streamable, streamable_methods, streamed_losses


def _sixteenths(lin: nn.Linear) -> None:
    lin.weight.copy_(torch.round(lin.weight * 16) / 16)


class Sixteenths(Quantizer):
    """Weights rounded to multiples of 1/16: no grid recorded, no calibration, per layer."""
    name = "test-sixteenths"
    streamable = True

    def quantize_layers(self, model, layers, spec, calibration):
        for lin in layers.values():
            _sixteenths(lin)
        return {n: {"seen": 1.0} for n in layers}


class Watching(Quantizer):
    """Calibrated: records the first calibration hidden state each block is given, then rounds like
    Sixteenths. ``options``: ``flow`` (fp | quantized), ``calib_batch_size``."""
    name = "test-watching"
    needs_calibration = True
    streamable = True
    seen: dict[str, torch.Tensor] = {}

    def parse_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - {"flow", "calib_batch_size"}
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))}")
        return {"flow": "quantized", "calib_batch_size": 8, **options}

    def calibration_flow(self, options):
        return self.parse_options(options)["flow"]

    def calibration_batch_size(self, options):
        return self.parse_options(options)["calib_batch_size"]

    def stream_problem(self, options):
        return "test-watching cannot stream with calib_batch_size 3" if options.get("calib_batch_size") == 3 else None

    def quantize_block(self, job: BlockJob, spec: QuantSpec) -> BlockDone:
        args, kwargs = job.inputs[0]
        Watching.seen[job.prefix] = args[0].detach().clone()
        fp_outputs = [job.module(*a, **k) for a, k in job.inputs] if self.calibration_flow(dict(spec.options)) == "fp" \
            else None
        for lin in job.linears.values():
            _sixteenths(lin)
        return BlockDone({n: {} for n in job.linears}, fp_outputs)


@contextmanager
def registered(*classes: type[Quantizer]) -> Iterator[None]:
    for cls in classes:
        register_quantizer(cls)
    try:
        yield
    finally:
        for cls in classes:
            QUANTIZERS.pop(cls.name, None)


def _llama(tmp_path: Path) -> Path:
    path = tmp_path / "llama"
    build_model("llama", "micro", vocab_size=96, max_positions=64, seed=3).save_pretrained(path)
    return path


def test_a_registered_quantizer_runs_through_both_pipelines_with_the_same_numbers(tmp_path):
    path = _llama(tmp_path)
    blocks = torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(0))
    with registered(Sixteenths):
        spec = QuantSpec(method="test-sixteenths", bits=4, group_size=16)
        res = streamed_losses(path, spec, blocks, batch_size=2)
        model = load_checkpoint(path)
        fp = evaluate_loss(model, blocks, 2)
        with quantized(model, spec) as q_res:
            q = evaluate_loss(model, blocks, 2)
            on_grid = all(torch.equal(lin.weight * 16, torch.round(lin.weight * 16))
                          for lin in model.model.layers[0].modules() if isinstance(lin, nn.Linear))
    assert on_grid and res.q.loss != res.fp.loss
    assert res.fp.block_sums == fp.block_sums and res.q.block_sums == q.block_sums
    assert set(res.layers) == set(q_res.layers) and all(v["seen"] == 1.0 for v in res.layers.values())
    assert "test-sixteenths" not in QUANTIZERS


def _block_inputs(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The hidden states entering every decoder block of ``model`` for ``tokens`` (watched by hooks)."""
    seen: dict[str, torch.Tensor] = {}

    def watch(prefix: str):
        def hook(mod, args, kwargs) -> None:
            seen.setdefault(prefix, (args[0] if args else kwargs["hidden_states"]).detach().clone())
        return hook
    handles = [layer.register_forward_pre_hook(watch(f"model.layers.{i}."), with_kwargs=True)
               for i, layer in enumerate(model.model.layers)]
    try:
        model(input_ids=tokens, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("flow", ["fp", "quantized"])
def test_streaming_carries_calibration_as_the_flow_says(tmp_path, flow):
    path = _llama(tmp_path)
    blocks = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    calib = torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(1))
    Watching.seen = {}
    with registered(Watching):
        spec = QuantSpec(method="test-watching", bits=4, group_size=16, options=(("flow", flow),))
        streamed_losses(path, spec, blocks, batch_size=2, calibration=calib)
    model = load_checkpoint(path)
    fp_inputs = _block_inputs(model, calib[:8])
    with torch.no_grad():
        for lin in model.modules():
            if isinstance(lin, nn.Linear) and lin is not model.get_output_embeddings():
                _sixteenths(lin)
    q_inputs = _block_inputs(model, calib[:8])
    expected, other = (fp_inputs, q_inputs) if flow == "fp" else (q_inputs, fp_inputs)
    assert list(Watching.seen) == list(expected) and len(expected) > 1
    for p, h in Watching.seen.items():
        assert torch.allclose(h, expected[p], rtol=0, atol=1e-6)
    last = list(expected)[-1]  # the flows differ past block 0, so the test tells them apart
    assert not torch.allclose(other[last], expected[last], rtol=0, atol=1e-3)


def test_what_can_stream_comes_from_the_contract():
    class NoStream(Sixteenths):
        name = "test-nostream"
        streamable = False

    with registered(Sixteenths, Watching, NoStream):
        assert streamable_methods() == sorted(["awq", "gptq", "rtn", "test-sixteenths", "test-watching"])
        with pytest.raises(QrobustError, match="layer streaming supports .*test-sixteenths.* 'test-nostream'"):
            check_streamable([QuantSpec(method="test-nostream")])
        with pytest.raises(QrobustError, match="cannot stream with calib_batch_size 3"):
            check_streamable([QuantSpec(method="test-watching", options=(("calib_batch_size", 3),))])
        with pytest.raises(ConfigError, match="unknown option"):
            check_streamable([QuantSpec(method="test-watching", options=(("nope", 1),))])
        w = QuantSpec(method="test-watching", options=(("calib_batch_size", 5),))
        s = QuantSpec(method="test-sixteenths")
        assert check_streamable([w, s]) == {w: 5}  # only calibrated variants get a calibration batch size
    gptq = QuantSpec(method="gptq", options=(("sequential", False),))
    with pytest.raises(QrobustError, match="block-sequential"):
        check_streamable([gptq])
    assert get_quantizer("gptq").calibration_flow({"sequential": False}) == "fp"
    assert get_quantizer("gptq").calibration_flow({}) == "quantized"
    assert get_quantizer("awq").calibration_flow({}) == "fp"
    assert get_quantizer("rtn").calibration_flow({}) == "none"


def test_export_reads_records_grid_from_the_contract():
    class Gridded(Sixteenths):
        name = "test-gridded"
        records_grid = True

    with registered(Sixteenths, Gridded):
        check_spec(QuantSpec(method="test-gridded"))
        with pytest.raises(QrobustError, match="'test-sixteenths' does not record .* export supports gptq, rtn, "
                                               "test-gridded"):
            check_spec(QuantSpec(method="test-sixteenths"))
    with pytest.raises(QrobustError, match="'awq' does not record"):
        check_spec(QuantSpec(method="awq"))


def test_a_calibrated_quantizer_must_say_its_flow():
    class Silent(Quantizer):
        name = "test-silent"
        needs_calibration = True

    with pytest.raises(NotImplementedError, match="calibration_flow"):
        Silent().calibration_flow({})
    with pytest.raises(ConfigError, match="method 'test-silent' takes no options, got: a"):
        Silent().check_options({"a": 1})


def test_unknown_names_are_one_line_listing_the_known():
    with pytest.raises(ConfigError, match=r"unknown quantization method 'nope'; known: awq, gptq, rtn$"):
        get_quantizer("nope")
    with pytest.raises(ConfigError, match=r"unknown quantization method 'nope'; known: awq, gptq, rtn$"):
        QuantSpec(method="nope")
    with pytest.raises(UnknownGridError, match=r"unknown quantization grid 'fp8'; known: reference, compressed-tensors$"):
        get_grid("fp8")
    with pytest.raises(ConfigError, match=r"unknown AWQ layout 'nope'; known: gpt_neox, llama$"):
        get_layout("nope")
    with pytest.raises(ConfigError, match="unknown GPTQ quant_grid 'fp8'; known: reference, compressed-tensors"):
        get_quantizer("gptq").check_options({"quant_grid": "fp8"})


def test_a_registered_grid_is_used_by_name():
    from qrobust.quant.formats.grid import fake_quantize_grid

    @register_grid("test-halves")
    class Halves(Grid):  # codes 0 … 2^b − 1 at steps of 1/2, zero mid-grid
        def params(self, x, bits, sym):
            return torch.full((x.shape[0], 1), 0.5), torch.full((x.shape[0], 1), float(2 ** (bits - 1)))

        def qdq(self, w, scale, zero, bits):
            return scale * (torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1) - zero)

        def codes(self, w, scale, zero, bits):
            return (torch.round(w / scale) + zero).to(torch.int32)
    try:
        w = torch.tensor([[0.2, 0.3, -0.8, 9.0]])
        out, grid = fake_quantize_grid(w, 3, -1, True, "test-halves")
        assert out.tolist() == [[0.0, 0.5, -1.0, 1.5]]  # 9.0 clips at (7 − 4) · 0.5
        assert grid.codes(out).tolist() == [[4, 5, 2, 7]]
    finally:
        del GRIDS["test-halves"]


class Gain(nn.Module):
    """A per-channel gain: not a norm, so AWQ's generic rule does not fold scales into it."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 2.0, d))

    def forward(self, x):
        return x * self.weight


class Block(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.gain, self.fc1, self.fc2 = Gain(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.gain(x))))


def _awq_on_block(seed: int) -> tuple[dict[str, dict], Block, torch.Tensor]:
    torch.manual_seed(seed)
    block = Block()
    x = torch.randn(2, 12, 16) * torch.linspace(0.1, 5.0, 16)
    linears = {"fc1": block.fc1, "fc2": block.fc2}
    info: dict[str, dict] = {}
    with torch.no_grad():
        ref = block(x)
        awq_block(block, linears, [((x,), {})], QuantSpec(method="awq", bits=3, group_size=8), awq_options({}), info,
                  "b.")
    return info, block, ref


def test_a_registered_awq_layout_is_used_for_its_architecture():
    info, _, _ = _awq_on_block(0)
    assert "awq_ratio" not in info["b.fc1"]  # the generic rule finds nothing to scale here

    @register_mapping("test-gain-mlp", requires=("gain", "fc1", "fc2"))
    def gain_mlp(mods: dict[str, nn.Module]) -> list[Mapping]:
        return [Mapping("mlp_in", mods["gain"], ["fc1"], [mods["fc1"]])]
    try:
        assert layout_of(Block()).name == "test-gain-mlp" and layout_of(nn.Linear(2, 2)) is None
        info, block, ref = _awq_on_block(0)
        assert "awq_ratio" in info["b.fc1"] and "awq_ratio" not in info["b.fc2"]
        assert not torch.equal(block.gain.weight, Gain(16).weight)  # the inverse scale was folded into the gain
    finally:
        del MAPPINGS["test-gain-mlp"]
