"""Library profiles reproduce the library they are named after.

GPTQ ``llmcompressor`` quantizes on compressed-tensors' grid (checked against that package's own
``calculate_qparams`` / ``fake_quantize``), its records get a key of their own, and its export holds that
grid. AWQ ``autoawq`` / ``llmcompressor``: candidate ratios, the "no scaling" candidate and the grid, on
constructed cases whose chosen ratio is known by hand; existing variants keep their keys."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from qrobust.errors import ConfigError
from qrobust.models import build_model
from qrobust.quant import QuantSpec, quantized, select_linears
from qrobust.quant import awq as awq_mod
from qrobust.quant.methods.awq_mappings import Mapping
from qrobust.quant.methods.awq_options import awq_fake_quantize, awq_options, candidates
from qrobust.quant.methods.awq_search import search_scale
from qrobust.quant.methods.gptq import gptq_options
from qrobust.quant.methods.gptq_core import gptq_quantize
from qrobust.quant.formats.grid import fake_quantize, fake_quantize_grid
from qrobust.results.store import record_key

CT_MISSING = "needs compressed-tensors (pip install 'qrobust[export]') to compare with its own functions"


def _ct_qdq(w: torch.Tensor, bits: int, group_size: int, sym: bool):
    """compressed-tensors' own weight quantization of ``w`` [out, in]: observer min/max per group,
    ``calculate_qparams``, ``fake_quantize``. Returns (dequantized, scale, signed zero point)."""
    pytest.importorskip("compressed_tensors", reason=CT_MISSING)
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize as ct_fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams
    if group_size == -1:
        args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy="channel")
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    else:
        args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy="group", group_size=group_size)
        g = w.unflatten(1, (-1, group_size))
        lo, hi = g.amin(-1), g.amax(-1)
    scale, zp = calculate_qparams(lo, hi, args)
    return ct_fake_quantize(w, scale, zp, args), scale, zp


def _groups_of_every_kind(rows: int = 6, seed: int = 0) -> torch.Tensor:
    """[rows, 40] in groups of 8: mixed signs, no negative value, all zero, no positive value, constant."""
    w = torch.randn(rows, 40, generator=torch.Generator().manual_seed(seed))
    w[:, 8:16] = w[:, 8:16].abs()
    w[:, 16:24] = 0.0
    w[:, 24:32] = -w[:, 24:32].abs()
    w[:, 32:40] = 0.3
    return w


# ---------------------------------------------------------------------------------------------- grid
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_compressed_tensors_grid_is_theirs_bit_for_bit(bits, sym):
    w = _groups_of_every_kind()
    ref, scale, zp = _ct_qdq(w, bits, 8, sym)
    out, grid = fake_quantize_grid(w, bits, 8, sym, "compressed-tensors")
    assert torch.equal(out, ref)
    assert torch.equal(grid.scale, scale)
    assert torch.equal(grid.zero - 2 ** (bits - 1), zp.float())  # stored unsigned, theirs signed
    codes = grid.codes(out).float()  # the codes export writes dequantize to the same weights
    assert torch.equal(grid.scale[:, grid.g_idx] * (codes - grid.zero[:, grid.g_idx]), out)
    # per output channel (their "channel" strategy) too
    ref, scale, _ = _ct_qdq(w, bits, -1, sym)
    out, grid = fake_quantize_grid(w, bits, -1, sym, "compressed-tensors")
    assert torch.equal(out, ref) and torch.equal(grid.scale, scale)


def test_a_group_without_negative_values_hand_computed():
    """4 bits, symmetric, group [0.1, 0.2, 0.3, 0.4]. Reference GPTQ: scale 0.4/15 with the zero point mid-grid,
    so everything above 7·0.4/15 ≈ 0.187 clips there. compressed-tensors: scale 0.4/7.5, levels −8 … 7."""
    w = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    ref = fake_quantize(w, 4, -1, True)  # the reference grid keeps its quirk (unchanged)
    s = 0.4 / 15
    assert torch.allclose(ref, torch.tensor([[4 * s, 7 * s, 7 * s, 7 * s]]), atol=1e-7)
    ct = fake_quantize(w, 4, -1, True, "compressed-tensors")
    s = 0.4 / 7.5  # 0.1/s = 1.875 → 2, 0.2/s = 3.75 → 4, 0.3/s = 5.625 → 6, 0.4/s = 7.5 → clamp 7
    assert torch.allclose(ct, torch.tensor([[2 * s, 4 * s, 6 * s, 7 * s]]), atol=1e-7)
    # an all-zero group: scale eps (no division by zero), weights stay 0
    z, grid = fake_quantize_grid(torch.zeros(1, 4), 4, -1, True, "compressed-tensors")
    assert torch.equal(z, torch.zeros(1, 4)) and float(grid.scale) == torch.finfo(torch.float32).eps


# ---------------------------------------------------------------------------------------------- GPTQ
def test_gptq_profiles_pick_their_grid():
    assert gptq_options({}).quant_grid == "reference"
    assert gptq_options({"profile": "reference"}).quant_grid == "reference"
    assert gptq_options({"profile": "gptqmodel"}).quant_grid == "reference"
    assert gptq_options({"profile": "llmcompressor"}).quant_grid == "compressed-tensors"
    assert gptq_options({"profile": "llmcompressor", "quant_grid": "reference"}).quant_grid == "reference"
    with pytest.raises(ConfigError, match="unknown GPTQ quant_grid 'ct'"):
        gptq_options({"quant_grid": "ct"})


def test_gptq_on_an_identity_hessian_is_compressed_tensors_rtn():
    """H = I: no error feedback, so GPTQ with static groups is RTN; on the llmcompressor grid it must be
    compressed-tensors' own quantization of W, including the groups without a negative value."""
    w = _groups_of_every_kind(rows=5)
    ref, scale, _ = _ct_qdq(w, 4, 8, True)
    res = gptq_quantize(w, torch.eye(40), 4, 8, True, act_order=True, static_groups=True, grid="compressed-tensors")
    assert torch.equal(res.weight, ref)
    assert torch.equal(res.scale, scale)


def test_llmcompressor_gptq_model_records_and_uses_the_compressed_tensors_grid():
    model = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=1)
    first = select_linears(model)["model.layers.0.self_attn.q_proj"]
    with torch.no_grad():
        first.weight[0, :16] = first.weight[0, :16].abs()  # a group with no negative weight
    fp = {n: m.weight.detach().clone() for n, m in select_linears(model).items()}
    calib = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    spec = QuantSpec(method="gptq", bits=4, group_size=16, options=(("profile", "llmcompressor"),))
    with quantized(model, spec, calib) as res:
        for name, m in select_linears(model).items():
            grid = res.grids[name]
            assert grid.grid == "compressed-tensors"
            _, scale, zp = _ct_qdq(fp[name], 4, 16, True)  # static groups: parameters from the FP weight
            assert torch.equal(grid.scale, scale) and torch.equal(grid.zero, zp.float() + 8)
            q = m.weight.detach()
            codes = grid.codes(q)
            assert codes.min() >= 0 and codes.max() <= 15
            assert torch.equal(grid.scale[:, grid.g_idx] * (codes.float() - grid.zero[:, grid.g_idx]), q)
    s = res.grids["model.layers.0.self_attn.q_proj"].scale[0, 0]
    assert s == fp["model.layers.0.self_attn.q_proj"][0, :16].max() / 7.5  # not max/15 (the reference quirk)


def _plain(spec: QuantSpec) -> dict:
    """A variant's identity as records were keyed before profiles implied anything."""
    return {"method": spec.method, "bits": spec.bits, "group_size": spec.group_size, "sym": spec.sym,
            "include": list(spec.include), "exclude": list(spec.exclude), "options": dict(spec.options)}


def test_existing_variants_keep_their_keys_and_the_changed_profile_gets_a_new_one():
    same = [QuantSpec(), QuantSpec(method="gptq"), QuantSpec(method="gptq", options=(("profile", "reference"),)),
            QuantSpec(method="gptq", options=(("profile", "gptqmodel"),)), QuantSpec(method="awq", sym=False),
            QuantSpec(method="awq", options=(("clip", False),)),
            QuantSpec(method="gptq", options=(("profile", "llmcompressor"), ("quant_grid", "reference")))]
    for spec in same:
        assert spec.to_dict() == _plain(spec), spec
    changed = QuantSpec(method="gptq", options=(("profile", "llmcompressor"),))
    assert changed.to_dict() == {**_plain(changed), "quant_grid": "compressed-tensors"}
    assert record_key({"variant": changed.to_dict()}) != record_key({"variant": _plain(changed)})


def test_llmcompressor_gptq_export_holds_the_compressed_tensors_grid(tiny_run, tmp_path):
    pytest.importorskip("compressed_tensors", reason=CT_MISSING)
    import qrobust
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM
    ck = tmp_path / "ck"
    shutil.copytree(tiny_run / "checkpoints" / "main" / "step-0000012", ck)
    model = AutoModelForCausalLM.from_pretrained(ck)
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h"
    with torch.no_grad():
        w = model.get_submodule(name).weight
        w[:3, :16] = w[:3, :16].abs()  # groups with no negative weight
    model.save_pretrained(ck, safe_serialization=True)
    w = model.get_submodule(name).weight.detach().clone()
    calib = qrobust.calib_blocks(ck, n_samples=8)
    rep = qrobust.export(ck, tmp_path / "x", method="gptq", bits=4, group_size=16, calibration=calib,
                         verify_blocks=4, profile="llmcompressor")
    assert rep["loss_diff"] == 0.0  # the reloaded model is the evaluated one
    f = safe_open(str(tmp_path / "x" / "model.safetensors"), "pt")
    _, scale, _ = _ct_qdq(w, 4, 16, True)
    assert torch.equal(f.get_tensor(name + ".weight_scale"), scale)  # what llm-compressor itself would write


# ---------------------------------------------------------------------------------------------- AWQ
def test_awq_candidates_and_options_per_profile():
    assert candidates(awq_options({})) == [(i / 20, True) for i in range(20)]
    assert candidates(awq_options({"duo_scaling": False})) == [(i / 20, False) for i in range(20)]
    lc = candidates(awq_options({"profile": "llmcompressor"}))
    assert lc[0] == (0.0, False) and lc[1:] == [(j / 18, True) for j in range(19)] and lc[-1] == (1.0, True)
    assert candidates(awq_options({"profile": "llmcompressor", "duo_scaling": False})) == \
        [(j / 19, False) for j in range(20)]
    a, b = awq_options({}), awq_options({"profile": "llmcompressor"})
    assert (a.quant_grid, a.clip) == ("autoawq", True) and (b.quant_grid, b.clip) == ("compressed-tensors", False)
    assert awq_options({"profile": "llmcompressor", "clip": True}).clip
    with pytest.raises(ConfigError, match="unknown AWQ profile 'awq'; known: autoawq, llmcompressor"):
        awq_options({"profile": "awq"})
    with pytest.raises(ConfigError, match="quant_grid"):
        awq_options({"quant_grid": "gptq"})
    with pytest.raises(ConfigError, match="n_grid >= 3"):
        awq_options({"profile": "llmcompressor", "n_grid": 2})


# Constructed scale searches on one linear y = W x. x̄ = V (every |x| equals V); K holds integer codes whose
# rows span exactly −8 … 7, so c·K is on the 4-bit asymmetric grid of both libraries for any c > 0.
V = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 0.5, 0.25, 1.0])
K = torch.tensor([[-8, 7, 3, -1, 0, 5, -4, 2], [7, -8, -2, 6, 1, -3, 4, 0],
                  [0, 3, 7, -8, -5, 2, 1, -6], [4, -6, -8, 1, 7, 0, -2, 3]], dtype=torch.float32)
X = V * torch.tensor([[1, -1, 1, 1, -1, 1, -1, 1], [-1, 1, 1, -1, 1, 1, -1, -1],
                      [1, 1, -1, 1, 1, -1, 1, -1], [-1, -1, -1, -1, -1, -1, 1, 1]], dtype=torch.float32)


def _search(w: torch.Tensor, profile: str, duo: bool) -> dict:
    lin = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    m = Mapping("t", nn.LayerNorm(8), ["lin"], [lin])
    cap = SimpleNamespace(abs_sum={"lin": X.abs().sum(0)}, count={"lin": X.shape[0]}, calls={lin: [((X,), {})]})
    with torch.no_grad():
        return search_scale(m, {"lin": lin}, cap, QuantSpec(method="awq", bits=4, group_size=-1, sym=False),
                             awq_options({"profile": profile, "duo_scaling": duo}))


def _slow_choice(w: torch.Tensor, profile: str, duo: bool) -> tuple[float, bool, float]:
    """The objective written out again: every candidate's scales from the libraries' formulas, its
    quantizer (AutoAWQ's pseudo-quantizer, or compressed-tensors' own), the output MSE in float64 over
    (token, output) pairs; the first of equal losses wins."""
    x_mean = X.abs().mean(0)
    rows = w.abs() / (w.abs().amax(1, keepdim=True) + 1e-6)
    w_mean = rows.double().sum(0) / w.shape[0] if profile == "llmcompressor" else rows.mean(0)
    best = (None, None, float("inf"))
    for r, d in candidates(awq_options({"profile": profile, "duo_scaling": duo})):
        s = (x_mean.pow(r) / (w_mean.pow(1 - r) + 1e-4)).clamp(min=1e-4) if d else x_mean.pow(r).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        if profile == "llmcompressor":
            q = (_ct_qdq((w * s).float(), 4, -1, False)[0] / s).float()
        else:
            q = awq_fake_quantize(w * s.float(), 4, -1, True) / s.float()
        loss = 0.0
        for t in range(X.shape[0]):
            for o in range(w.shape[0]):
                loss += (sum(float(q[o, i]) * float(X[t, i]) for i in range(8))
                         - sum(float(w[o, i]) * float(X[t, i]) for i in range(8))) ** 2
        loss /= X.shape[0] * w.shape[0]
        if loss < best[2]:
            best = (r, d, loss)
    return best


def test_llmcompressor_chooses_ratio_one_which_autoawq_lacks():
    """W = K/V: with s ∝ x̄ (ratio 1 with duo scaling: w̄^0 = 1) W·s is on the grid, loss ≈ 0."""
    w = K / 16 / V
    got = _search(w, "llmcompressor", duo=True)
    assert (got["ratio"], got["duo"]) == (1.0, True)
    assert got["loss"] < 1e-10 * got["rtn_loss"]
    assert _slow_choice(w, "llmcompressor", True)[:2] == (1.0, True)
    other = _search(w, "autoawq", duo=True)  # 1.0 is not among i/20, i < 20
    r, d, loss = _slow_choice(w, "autoawq", True)
    assert (other["ratio"], other["duo"]) == (r, d) and r < 1.0
    assert other["loss"] == pytest.approx(loss, rel=1e-4) and other["loss"] > 1e3 * got["loss"]


def test_llmcompressor_keeps_no_scaling_when_it_is_best():
    """W = K/16 is on the grid as it is: only llm-compressor's "no scaling" candidate gets loss 0."""
    w = K / 16
    got = _search(w, "llmcompressor", duo=True)
    assert (got["ratio"], got["duo"], got["loss"]) == (0.0, False, 0.0)
    assert torch.equal(got["scale"], torch.ones(8))
    other = _search(w, "autoawq", duo=True)  # AutoAWQ's ratio 0 still divides by w̄: never s = 1 here
    r, d, loss = _slow_choice(w, "autoawq", True)
    assert (other["ratio"], other["duo"]) == (r, d) and other["loss"] > 0
    assert other["loss"] == pytest.approx(loss, rel=1e-4)


def test_autoawq_chooses_a_quarter_which_llmcompressor_lacks():
    """W = K/V^¼ without duo scaling: s = x̄^¼ puts W·s on the grid; ¼ = 5/20 but is no j/19."""
    w = K / 16 / V.pow(0.25)
    got = _search(w, "autoawq", duo=False)
    assert (got["ratio"], got["duo"]) == (0.25, False)
    assert got["loss"] < 1e-10 * got["rtn_loss"]
    assert _slow_choice(w, "autoawq", False)[:2] == (0.25, False)
    other = _search(w, "llmcompressor", duo=False)
    r, d, loss = _slow_choice(w, "llmcompressor", False)
    assert (other["ratio"], other["duo"]) == (r, d) and r in (5 / 19, 4 / 19)
    assert other["loss"] == pytest.approx(loss, rel=1e-4) and other["loss"] > 1e3 * got["loss"]


def test_llmcompressor_awq_quantizes_with_compressed_tensors_symmetric_step(monkeypatch):
    """Every quantization of a whole symmetric llmcompressor-profile AWQ run (each candidate of the search
    and the final RTN of the scaled weights) equals compressed-tensors' own fake_quantize of that weight —
    and differs from AutoAWQ's step max|w|/(2^(b−1)−1)."""
    pytest.importorskip("compressed_tensors", reason=CT_MISSING)
    seen = {"calls": 0, "differ": 0}
    inner = awq_mod.grid_quantize

    def checked(w, spec, opts, group_size=None):
        out = inner(w, spec, opts, group_size)
        g = spec.group_size if group_size is None else group_size
        assert torch.equal(out, _ct_qdq(w, spec.bits, g, spec.sym)[0])
        seen["calls"] += 1
        seen["differ"] += not torch.equal(out, awq_fake_quantize(w, spec.bits, g, False))
        return out
    from qrobust.quant.methods import awq_search
    monkeypatch.setattr(awq_mod, "grid_quantize", checked)  # the final RTN
    monkeypatch.setattr(awq_search, "grid_quantize", checked)  # the scale search
    model = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=4)
    calib = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    spec = QuantSpec(method="awq", bits=4, group_size=16, options=(("profile", "llmcompressor"),))
    with quantized(model, spec, calib) as res:
        ratios = [i["awq_ratio"] for i in res.layers.values() if "awq_ratio" in i]
    n_layers = len(select_linears(model))
    assert seen["calls"] > 20 * 4 and seen["differ"] == seen["calls"]  # 20 candidates × 4 mappings + final RTN
    assert len(ratios) > 0 and n_layers > 0


def test_llmcompressor_profiles_stream_as_they_run_in_memory(tmp_path):
    """Layer streaming runs the same per-block code: the llmcompressor profiles give the same losses."""
    from qrobust.evaluate import evaluate_loss
    from qrobust.quant.pipelines.streamed import streamed_losses
    from qrobust.models import load_checkpoint
    path = tmp_path / "llama"
    build_model("llama", "micro", vocab_size=96, max_positions=64, seed=3).save_pretrained(path)
    blocks = torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(4))
    calib = torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(5))
    for spec in (QuantSpec(method="awq", bits=3, group_size=16, options=(("profile", "llmcompressor"),)),
                 QuantSpec(method="gptq", bits=3, group_size=16, options=(("profile", "llmcompressor"),))):
        res = streamed_losses(path, spec, blocks, batch_size=2, calibration=calib)
        model = load_checkpoint(path)
        with quantized(model, spec, calib):
            q = evaluate_loss(model, blocks, 2)
        assert res.q.block_sums == q.block_sums and res.q.loss != res.fp.loss
