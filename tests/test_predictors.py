"""The predictors of GPTQ ΔQ L, each against an independent slow reference: scipy's kurtosis, explicit
per-token sums for the Hessian-weighted errors, ``quantized`` + ``evaluate_loss`` by hand for the losses,
per-window ``.backward()`` for the Fisher; plus: the model (weights, modes, grads, RNG) is left as found,
XᵀX is shared between linears and variants, keys and refusals."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from qrobust.errors import ConfigError
from qrobust.evaluate import evaluate_loss
from qrobust.models import build_model
from qrobust.monitor.predictors import PREDICTORS, PredictorContext, compute_predictors
from qrobust.monitor.predictors.hessian import gptq_weights, hessians
from qrobust.quant.formats.grid import GroupSizeError
from qrobust.quant.methods.gptq import gptq_options
from qrobust.quant.methods.gptq_core import gptq_quantize
from qrobust.quant.pipelines.in_memory import quantized, select_linears
from qrobust.quant.registry import QuantSpec

RTN3, RTN4, GPTQ3 = QuantSpec("rtn", 3, 16), QuantSpec("rtn", 4, 16), QuantSpec("gptq", 3, 16)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A llama micro model (q/k/v and gate/up share inputs) with heavier-tailed weights than at init."""
    m = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=1)
    torch.manual_seed(0)
    with torch.no_grad():
        for lin in select_linears(m).values():
            lin.weight.add_(0.05 * torch.distributions.StudentT(3.0).sample(lin.weight.shape).clamp(-20, 20))
    return m


@pytest.fixture(scope="module")
def tokens() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (10, 32), generator=g), torch.randint(0, 64, (6, 32), generator=g)


def _inputs(model: nn.Module, calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every token's input to every linear (float64), from a plain hooked forward, one window at a time."""
    seen: dict[str, list[torch.Tensor]] = {}
    def grab(name: str):
        return lambda m, a: seen.setdefault(name, []).append(a[0].reshape(-1, a[0].shape[-1]))
    hs = [lin.register_forward_pre_hook(grab(n)) for n, lin in select_linears(model).items()]
    with torch.no_grad():
        for w in calib:
            model(input_ids=w[None])
    for h in hs:
        h.remove()
    return {n: torch.cat(v).double() for n, v in seen.items()}


def _token_err(d: torch.Tensor, X: torch.Tensor) -> float:
    """Σ_tokens ‖d x‖² / N, a token at a time."""
    d = d.double()
    return sum(float((d @ x).pow(2).sum()) for x in X) / X.shape[0]


def _rtn_deltas(model: nn.Module, spec: QuantSpec) -> dict[str, torch.Tensor]:
    layers = select_linears(model)
    w0 = {n: lin.weight.detach().clone() for n, lin in layers.items()}
    with quantized(model, spec):
        return {n: lin.weight.detach() - w0[n] for n, lin in layers.items()}


def test_weight_statistics_match_scipy_and_numpy(model):
    ws = [lin.weight.detach().double().numpy() for lin in select_linears(model).values()]
    kurt = [scipy.stats.kurtosis(w.ravel(), fisher=True, bias=True) for w in ws]
    ratio = [np.abs(w).max() / np.sqrt((w ** 2).mean()) for w in ws]
    out = sum(int((np.abs(w - w.mean()) > 4.0 * w.std()).sum()) for w in ws) / sum(w.size for w in ws)
    v = compute_predictors(model, ["kurtosis", "kurtosis_max", "max_rms", "max_rms_max", "outlier_frac"], []).values
    assert v["kurtosis"] == pytest.approx(np.mean(kurt), rel=1e-9)
    assert v["kurtosis_max"] == pytest.approx(max(kurt), rel=1e-9)
    assert v["max_rms"] == pytest.approx(np.mean(ratio), rel=1e-9)
    assert v["max_rms_max"] == pytest.approx(max(ratio), rel=1e-9)
    assert v["outlier_frac"] == pytest.approx(out, rel=1e-12) and out > 0  # the t(3) tails put some beyond 4σ


def test_rtn_weight_err_is_the_quantized_models_error(model):
    d = _rtn_deltas(model, RTN3)
    ws = {n: lin.weight.detach().double() for n, lin in select_linears(model).items()}
    want = sum(float(d[n].double().pow(2).sum()) for n in d) / sum(float(w.pow(2).sum()) for w in ws.values())
    assert compute_predictors(model, ["rtn_weight_err"], [RTN3]).values["rtn_weight_err/rtn-w3g16"] == \
        pytest.approx(want, rel=1e-6)


def test_hessian_errors_equal_explicit_token_sums(model, tokens):
    X = _inputs(model, tokens[0])
    v = compute_predictors(model, ["hessian_err_rtn", "hessian_rel_rtn"], [RTN3, RTN4], tokens[0]).values
    for spec in (RTN3, RTN4):
        d = _rtn_deltas(model, spec)
        err = sum(_token_err(d[n], X[n]) for n in d)
        ref = sum(_token_err(lin.weight.detach(), X[n]) for n, lin in select_linears(model).items())
        assert v[f"hessian_err_rtn/{spec.label}"] == pytest.approx(err, rel=1e-4)
        assert v[f"hessian_rel_rtn/{spec.label}"] == pytest.approx(err / ref, rel=1e-4)
    assert v["hessian_err_rtn/rtn-w3g16"] > v["hessian_err_rtn/rtn-w4g16"] > 0


def test_gptq_objective_below_rtn_per_layer_and_recomputed_directly(model, tokens):
    X = _inputs(model, tokens[0])
    ctx = PredictorContext(model, GPTQ3, tokens[0])
    q, d_rtn = gptq_weights(ctx), _rtn_deltas(model, RTN3)
    opts = gptq_options({})  # the spec has no options: GPTQ's default profile
    total = 0.0
    for n, lin in select_linears(model).items():
        w = lin.weight.detach().float()
        e_gptq, e_rtn = _token_err(q[n] - w, X[n]), _token_err(d_rtn[n], X[n])
        assert e_gptq < e_rtn, n  # GPTQ minimizes this objective; RTN is its starting point
        H = (X[n].T @ X[n] / X[n].shape[0]).float()  # an independent H, per linear (no stacking, no sharing)
        direct = gptq_quantize(w, H, 3, 16, True, damp=opts.damp, damp_step=opts.damp_step,
                               damp_max=opts.damp_max, block_size=opts.block_size).weight
        total += _token_err(direct - w, X[n])
    got = compute_predictors(model, ["hessian_err_gptq"], [GPTQ3], tokens[0]).values["hessian_err_gptq/gptq-w3g16"]
    assert got == pytest.approx(total, rel=1e-3)


def test_loss_predictors_equal_evaluate_loss_by_hand(model, tokens):
    calib, ev = tokens
    fp_e, fp_c = evaluate_loss(model, ev).loss, evaluate_loss(model, calib).loss
    with quantized(model, RTN3):
        q_e, q_c = evaluate_loss(model, ev).loss, evaluate_loss(model, calib).loss
    layers = select_linears(model)
    w1 = gptq_weights(PredictorContext(model, RTN3, calib))
    saved = {n: lin.weight.detach().clone() for n, lin in layers.items()}
    with torch.no_grad():
        for n, lin in layers.items():
            lin.weight.copy_(w1[n])
    g_e, g_c = evaluate_loss(model, ev).loss, evaluate_loss(model, calib).loss
    with torch.no_grad():
        for n, lin in layers.items():
            lin.weight.copy_(saved[n])
    v = compute_predictors(model, ["rtn_dq", "rtn_dq_calib", "gptq1_dq", "gptq1_dq_calib"], [RTN3], calib, ev).values
    assert v["rtn_dq/rtn-w3g16"] == pytest.approx(q_e / fp_e - 1, abs=1e-12)
    assert v["rtn_dq_calib/rtn-w3g16"] == pytest.approx(q_c / fp_c - 1, abs=1e-12)
    assert v["gptq1_dq/rtn-w3g16"] == pytest.approx(g_e / fp_e - 1, abs=1e-12)
    assert v["gptq1_dq_calib/rtn-w3g16"] == pytest.approx(g_c / fp_c - 1, abs=1e-12)


def test_rtn_dq_reuses_a_prefilled_fp_loss(model, tokens):
    ev = tokens[1]
    cache = {("fp_loss", id(ev)): 2.0}
    with quantized(model, RTN3):
        q = evaluate_loss(model, ev).loss
    v = compute_predictors(model, ["rtn_dq"], [RTN3], None, ev, cache=cache).values
    assert v["rtn_dq/rtn-w3g16"] == pytest.approx(q / 2.0 - 1, abs=1e-12)


def test_fisher_equals_per_window_backward(model, tokens):
    import copy
    import torch.nn.functional as F
    calib = tokens[0][:4]
    m = copy.deepcopy(model)
    layers = select_linears(m)
    F2 = {n: torch.zeros_like(lin.weight, dtype=torch.float64) for n, lin in layers.items()}
    for w in calib:
        m.zero_grad()
        logits = m(input_ids=w[None]).logits[0, :-1]
        F.cross_entropy(logits, w[1:]).backward()
        for n, lin in layers.items():
            F2[n] += lin.weight.grad.double() ** 2
    d = _rtn_deltas(model, RTN3)
    quad = sum(float((F2[n] * d[n].double() ** 2).sum()) for n in d) * (calib.shape[1] - 1) / calib.shape[0]
    want = 0.5 * quad / evaluate_loss(model, calib).loss
    got = compute_predictors(model, ["fisher_rtn"], [RTN3], calib).values["fisher_rtn/rtn-w3g16"]
    assert got == pytest.approx(want, rel=1e-4) and want > 0


def test_same_values_under_inference_mode(model, tokens):
    """The monitor may call under ``torch.inference_mode()``, with inference-tensor tokens (the Fisher's
    gradients must still work)."""
    calib, ev = tokens[0][:3], tokens[1][:2]
    want = compute_predictors(model, list(PREDICTORS), [RTN3], calib, ev).values
    with torch.inference_mode():
        got = compute_predictors(model, list(PREDICTORS), [RTN3], calib.clone(), ev.clone()).values
    assert got == want


def test_xtx_shared_by_inputs_and_variants(model, tokens):
    calib = tokens[0]  # 10 windows: 2 batches of 8
    calls = []
    h = model.register_forward_pre_hook(lambda *a: calls.append(1))
    cache: dict = {}
    try:
        compute_predictors(model, ["hessian_err_rtn", "hessian_rel_rtn", "hessian_err_gptq", "hessian_rel_gptq"],
                           [RTN3, RTN4, GPTQ3], calib, cache=cache)
        assert len(calls) == 2  # one pass over the calibration windows for 12 values
        compute_predictors(model, ["hessian_err_rtn"], [RTN3], calib, cache=cache)
        assert len(calls) == 2  # a carried cache reuses them
    finally:
        h.remove()
    hs = hessians(PredictorContext(model, None, calib, cache=cache))
    lead = hs.leader
    for i in range(2):
        p = f"model.layers.{i}."
        assert lead[p + "self_attn.k_proj"] == lead[p + "self_attn.v_proj"] == p + "self_attn.q_proj"
        assert lead[p + "mlp.up_proj"] == p + "mlp.gate_proj"
        assert lead[p + "self_attn.o_proj"] == p + "self_attn.o_proj"
    assert len(hs.H) == 8 and hs.n_tokens == 10 * 32


def test_model_rng_modes_and_grads_left_as_found(tokens):
    m = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=3)
    m.train()
    m.model.layers[0].mlp.eval()
    frozen = m.model.layers[1].self_attn.q_proj.weight
    frozen.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    modes = {n: mod.training for n, mod in m.named_modules()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    rng = torch.get_rng_state()
    compute_predictors(m, list(PREDICTORS), [RTN3, GPTQ3], *tokens)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert all(p.grad is None for p in m.parameters())


def test_keys_per_variant_and_refusals(model, tokens):
    v = compute_predictors(model, ["kurtosis", "rtn_weight_err", "hessian_rel_rtn"], [RTN3, GPTQ3], tokens[0])
    assert set(v.values) == set(v.seconds) == {"kurtosis", "rtn_weight_err/rtn-w3g16", "rtn_weight_err/gptq-w3g16",
                                               "hessian_rel_rtn/rtn-w3g16", "hessian_rel_rtn/gptq-w3g16"}
    # the RTN weights depend on bits / group only: the RTN and GPTQ variants of w3g16 give the same RTN error
    assert v.values["rtn_weight_err/rtn-w3g16"] == v.values["rtn_weight_err/gptq-w3g16"]
    assert all(s >= 0 for s in v.seconds.values())
    with pytest.raises(ConfigError, match="unknown predictor 'nope'"):
        compute_predictors(model, ["nope"], [RTN3])
    with pytest.raises(ConfigError, match="reads calibration batches"):
        compute_predictors(model, ["hessian_err_rtn"], [RTN3], None, tokens[1])
    with pytest.raises(ConfigError, match="reads evaluation blocks"):
        compute_predictors(model, ["rtn_dq"], [RTN3], tokens[0])
    with pytest.raises(GroupSizeError, match="layer 'model.layers.0.self_attn.q_proj'.*larger than in_features"):
        compute_predictors(model, ["rtn_weight_err"], [QuantSpec("rtn", 3, 64)])
