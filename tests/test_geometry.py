"""Loss geometry against closed forms: quadratic operators with known spectra and traces, and a tiny
transformer whose full Hessian (torch.autograd.functional.hessian through functional_call) is the reference
for our Hessian-vector products, Lanczos eigenvalues and trace estimates; weight statistics by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from qrobust.errors import ConfigError
from qrobust.geometry import (HessianOperator, hutchinson, hutchpp, lanczos, power_iteration, select_parameters,
                              weight_stats)
from qrobust.models import build_model


def _sym(eigs: list[float], seed: int = 0) -> torch.Tensor:
    """Q diag(eigs) Qᵀ with a random orthogonal Q: a symmetric matrix with exactly these eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return (q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T).float()


def test_lanczos_finds_known_top_eigenvalues_with_small_residuals():
    eigs = [10.0, 7.5, 5.0] + [1.0 - 2.0 * i / 197 for i in range(197)] + [-12.0]  # one large negative
    A = _sym(eigs)
    r = lanczos(lambda v: A @ v, A.shape[0], k=3, iters=80, tol=1e-6)
    assert r.values == pytest.approx([10.0, 7.5, 5.0], rel=1e-4)
    assert max(r.residuals) < 1e-3 and r.converged
    assert r.matvecs < 80 + 3
    lm = lanczos(lambda v: A @ v, A.shape[0], k=1, iters=80, tol=1e-6, which="LM")
    assert lm.values == pytest.approx([-12.0], rel=1e-4)
    assert torch.allclose((A @ r.vectors[0]), 10.0 * r.vectors[0], atol=1e-3)


def test_lanczos_exact_on_a_small_invariant_subspace():
    A = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5]))
    r = lanczos(lambda v: A @ v, 4, k=2, iters=10)
    assert r.values == pytest.approx([3.0, 2.0], abs=1e-5) and r.iterations <= 4


def test_power_iteration_largest_magnitude():
    A = _sym([4.0, 1.0, 0.5, -0.2, 0.1, 0.0])
    r = power_iteration(lambda v: A @ v, 6, iters=500, tol=1e-9)
    assert r.values[0] == pytest.approx(4.0, rel=1e-5) and r.residuals[0] < 1e-3 and r.converged


def test_hutchinson_exact_on_diagonal_and_unbiased_with_known_variance():
    D = torch.diag(torch.arange(1.0, 51.0))
    r = hutchinson(lambda v: D @ v, 50, probes=4)
    assert r.trace == pytest.approx(1275.0) and r.stderr == pytest.approx(0.0, abs=1e-9)  # zᵀDz = tr D
    A = _sym([float(i % 7) - 2.0 for i in range(60)], seed=3)
    r = hutchinson(lambda v: A @ v, 60, probes=400, seed=1)
    true = float(torch.trace(A))
    assert abs(r.trace - true) < 4 * r.stderr
    off = A - torch.diag(torch.diag(A))
    var = 2 * float((off ** 2).sum())  # Var zᵀAz for Rademacher z
    assert r.stderr * math.sqrt(400) == pytest.approx(math.sqrt(var), rel=0.15)


def test_trace_intervals_cover_at_their_nominal_rate():
    """Over 300 seeds the 95 % intervals must contain the true trace about 95 % of the time
    (binomial sd 1.3 %; the band is ±4 sd)."""
    A = _sym([float(i % 7) - 2.0 for i in range(60)], seed=3)
    true = float(torch.trace(A.double()))
    for est in (lambda s: hutchinson(lambda v: A @ v, 60, probes=20, seed=s),
                lambda s: hutchpp(lambda v: A @ v, 60, matvecs=30, seed=s)):
        cover = sum(r.ci_low <= true <= r.ci_high for r in map(est, range(300))) / 300
        assert 0.9 <= cover <= 1.0, cover


def test_hutchpp_exact_for_low_rank_and_tighter_than_hutchinson():
    u = torch.randn(80, 3, generator=torch.Generator().manual_seed(0))
    A = u @ torch.diag(torch.tensor([9.0, 4.0, 1.0])) @ u.T
    r = hutchpp(lambda v: A @ v, 80, matvecs=12)
    assert r.trace == pytest.approx(float(torch.trace(A)), rel=1e-4) and r.matvecs == 12
    B = _sym([50.0, 30.0, 20.0] + [0.1] * 97, seed=2)
    pp = hutchpp(lambda v: B @ v, 100, matvecs=30, seed=4)
    h = hutchinson(lambda v: B @ v, 100, probes=30, seed=4)
    true = float(torch.trace(B))
    assert pp.ci_low <= true <= pp.ci_high and pp.stderr < h.stderr / 3


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model("gpt_neox", "micro", vocab_size=64, max_positions=32, seed=0)
    blocks = torch.randint(0, 64, (6, 12), generator=torch.Generator().manual_seed(1))
    return model, blocks


def _full_hessian(model, blocks, params, batch_size):
    """Reference: the Hessian of the mean token loss over ``blocks`` w.r.t. the flattened params."""
    names = [n for n, _ in params]
    shapes = [p.shape for _, p in params]
    sizes = [p.numel() for _, p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in params])
    batches = [blocks[i:i + batch_size] for i in range(0, len(blocks), batch_size)]
    tokens = [b.numel() - b.shape[0] for b in batches]

    def loss(flat):
        tensors = {n: c.view(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}
        total = 0
        for b, t in zip(batches, tokens):
            total = total + functional_call(model, tensors, (), {"input_ids": b, "labels": b}).loss * t
        return total / sum(tokens)

    model.set_attn_implementation("eager")
    try:
        return torch.autograd.functional.hessian(loss, flat0)
    finally:
        model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("arch,patterns,n_params,frozen", [
    ("gpt_neox", ["gpt_neox.layers.1.attention.dense.*", "gpt_neox.final_layer_norm.*"], 32 * 32 + 32 + 64,
     "gpt_neox.embed_in.weight"),
    ("llama", ["model.layers.1.self_attn.o_proj.*", "model.norm.*"], 32 * 32 + 32, "model.embed_tokens.weight"),
])
def test_hvp_eigenvalues_and_trace_match_the_full_hessian(tiny, arch, patterns, n_params, frozen):
    _, blocks = tiny
    model = build_model(arch, "micro", vocab_size=64, max_positions=32, seed=0)
    params = select_parameters(model, patterns)
    assert sum(p.numel() for _, p in params) == n_params
    H = _full_hessian(model, blocks, params, batch_size=4).double()
    assert torch.allclose(H, H.T, atol=1e-5)
    evals = torch.linalg.eigvalsh(H)
    outside = dict(model.named_parameters())[frozen]
    with HessianOperator(model, blocks, params, batch_size=4) as op:
        assert model.config._attn_implementation == "eager"
        assert not outside.requires_grad  # outside the subset: no gradients
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(op.matvec(v).double(), H @ v.double(), rtol=1e-4, atol=1e-5)
        top = lanczos(op.matvec, op.dim, k=3, iters=60, tol=1e-5)
        tr = hutchpp(op.matvec, op.dim, matvecs=60)
    assert model.config._attn_implementation == "sdpa" and outside.requires_grad
    assert top.values == pytest.approx(evals.flip(0)[:3].tolist(), rel=1e-3)
    assert abs(tr.trace - float(torch.trace(H))) < 4 * tr.stderr


def test_parameter_selection(tiny):
    model, _ = tiny
    lin = select_parameters(model, ["linear"])
    assert len(lin) == 8 and all(n.endswith(".weight") and p.ndim == 2 for n, p in lin)  # 4 per layer, no head
    assert "embed_out.weight" not in dict(lin)
    assert len(select_parameters(model, None)) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match="no parameter matches"):
        select_parameters(model, ["nope.*"])


def test_weight_stats_by_hand():
    lin = torch.nn.Linear(4, 2, bias=False)
    w = torch.tensor([[1.0, -1.0, 2.0, -2.0], [0.0, 0.0, 10.0, -10.0]])
    lin.weight.data = w.clone()
    model = torch.nn.Sequential(lin)
    st = weight_stats(model, k=1.5)
    o = st["overall"]
    x = w.reshape(-1).double()
    mu, sd = float(x.mean()), float(x.std(unbiased=False))
    assert o["mean"] == pytest.approx(0.0) and o["std"] == pytest.approx(math.sqrt(210 / 8))
    assert o["kurtosis"] == pytest.approx(float(((x - mu) ** 4).mean()) / sd ** 4)
    assert o["max_over_rms"] == pytest.approx(10 / math.sqrt(210 / 8))
    assert o["frac_beyond_1.5sigma"] == pytest.approx(2 / 8)  # only ±10 lie beyond 1.5σ ≈ 7.7
    assert st["layers"]["0"]["fro_norm"] == pytest.approx(math.sqrt(210))


def test_cli_sharpness_on_a_trained_checkpoint(tiny_run, capsys):
    import json as _json

    from qrobust.cli import main
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    assert main(["sharpness", str(ck), "--top-k", "2", "--iters", "12", "--trace-matvecs", "9", "--n-blocks", "2",
                 "--params", "linear", "--json"]) == 0
    r = _json.loads(capsys.readouterr().out)
    e = r["eigen"]
    assert len(e["values"]) == 2 and e["values"][0] >= e["values"][1] and len(e["residuals"]) == 2
    assert r["lambda_max"] == e["values"][0] and r["trace"]["method"] == "hutch++" and r["trace"]["matvecs"] == 9
    assert r["n_params"] == sum(v["numel"] for v in r["weights"]["layers"].values())  # 'linear' subset
    assert r["eval_set"]["n_blocks"] == 2
    assert main(["sharpness", str(ck), "--iters", "5", "--trace", "none", "--n-blocks", "2", "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert "top eigenvalues:" in out and "trace" not in out.split("top eigenvalues")[1].split("\n")[0]
    assert out.count("λmax") == 8


def test_cli_sharpness_bad_params_is_one_line(tiny_run, capsys):
    from qrobust.cli import main
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    assert main(["sharpness", str(ck), "--params", "nope.*", "--n-blocks", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no parameter matches" in err[0]


def test_sweep_measures_geometry_once_and_the_report_plots_it(tiny_run, tmp_path):
    from qrobust import api
    from qrobust.reporting import write_report
    from qrobust.reporting.geometry import rank_correlation
    from qrobust.sweeps import sweep
    from qrobust.results.store import Store
    out = tmp_path / "res"
    base = {"trajectory": str(tiny_run), "out": str(out), "bits": [3], "group_sizes": [16], "eval": {"n_blocks": 4}}
    s = sweep(base, progress=False)
    assert (s.records_written, s.geometry) == (4, 0)
    geo = {"iters": 6, "trace_matvecs": 6, "n_blocks": 2, "per_layer": True, "per_layer_iters": 2}
    s = sweep({**base, "geometry": geo}, progress=False)  # added later: only the geometry is computed
    assert (s.records_written, s.geometry, s.fp_evals) == (0, 4, 0)
    again = sweep({**base, "geometry": geo}, progress=False)
    assert (again.geometry, again.model_loads) == (0, 0)
    recs = Store(out).geometry()
    assert len(recs) == 4 and {r.trajectory for r in recs} == {"t"}
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    mine = next(r for r in recs if r.checkpoint.name == "main/step-0000012")
    direct = api.sharpness(ck, **geo)  # same settings, same blocks: the same numbers on CPU
    assert mine.geometry.lambda_max == direct["lambda_max"]
    cheap = api.sharpness(ck, sharpness=False, trace="none", n_blocks=1)  # weight statistics only: no HVPs
    assert "eigen" not in cheap and "trace" not in cheap
    assert cheap["weights"]["overall"] == direct["weights"]["overall"]
    assert mine.geometry.trace["trace"] == direct["trace"]["trace"]
    index = write_report(out)
    names = {p.name for p in index.parent.glob("*.png")}
    assert {"geometry_t.png", "dq_vs_geometry_t_rtn-w3g16.png", "layer_sharpness_t.png"} <= names
    assert len(mine.geometry.layers) == 8
    assert rank_correlation([1, 2, 3, 4], [1, 3, 2, 4])[0] == pytest.approx(0.8)  # 1 − 6·2 / (4·15)
    assert math.isnan(rank_correlation([1, 2], [2, 1])[0])
