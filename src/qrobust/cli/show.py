"""How the commands' results print: one readable line (or a few) per result; ``--json`` prints the
result itself."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def eval_lines(out: dict[str, Any]) -> list[str]:
    """``qrobust eval``'s result: FP loss (and the variant's ΔQ L), then each task's accuracy."""
    if out.get("streamed"):
        return [f"loss_fp {out['loss_fp']:.4f} over {out['n_tokens']} tokens | {out['label']}: loss_q "
                f"{out['loss_q']:.4f}, ΔQ L {100 * out['dq_rel']:+.3f}% (layer-streamed, {out['blocks']} blocks, "
                f"states on {out['states']}, median {out['block_seconds_median']:.2f} s per block)"]
    line = f"loss_fp {out['loss_fp']:.4f} (ppl {out['ppl_fp']:.2f}) over {out['n_tokens']} tokens"
    if "variant" in out:
        line += f" | {out['variant']}: loss_q {out['loss_q']:.4f}, ΔQ L {100 * out['dq_rel']:+.3f}%"
    lines = [line]
    for task, r in (out.get("tasks_fp") or {}).items():
        q_r = (out.get("tasks_q") or {}).get(task)
        qpart = f" | quantized acc {q_r['acc']:.4f}" if q_r else ""
        lines.append(f"{task}: acc {r['acc']:.4f} ± {r['acc_stderr']:.4f}, acc_norm {r['acc_norm']:.4f} "
                     f"(n={r['n']}){qpart}")
    return lines


def sharpness_lines(r: dict[str, Any]) -> list[str]:
    """``qrobust sharpness``'s result: loss, top eigenvalues, trace, per-layer λmax, weight statistics."""
    lines = [f"loss {r['loss']:.4f} over {r['n_blocks']}x{r['seq_len']} tokens, {r['n_params']:,} parameters, "
             f"|grad| {r['grad_norm']:.4g}"]
    e = r.get("eigen")
    if e:
        vals = ", ".join(f"{v:.5g} (res {res:.2g})" for v, res in zip(e["values"], e["residuals"]))
        state = "converged" if e["converged"] else f"not converged in {e['iterations']} steps"
        lines.append(f"top eigenvalues: {vals}  [{e['method']}, {e['matvecs']} products, {state}]")
    t = r.get("trace")
    if t:
        lines.append(f"trace: {t['trace']:.5g}  95% CI [{t['ci_low']:.5g}, {t['ci_high']:.5g}]  "
                     f"[{t['method']}, {t['matvecs']} products]")
    for name, le in (r.get("layers") or {}).items():
        lines.append(f"  λmax {le['values'][0]:10.5g}  {name}")
    w = (r.get("weights") or {}).get("overall")
    if w:
        k = r["weights"]["k"]
        lines.append(f"weights (quantized linears): max/RMS {w['max_over_rms']:.3g}, kurtosis {w['kurtosis']:.3g}, "
                     f"beyond {k:g}σ {100 * w[f'frac_beyond_{k:g}sigma']:.3f}%")
    return lines


def landscape_lines(r: dict[str, Any], plane: str, grid: int, out: str) -> list[str]:
    """``qrobust landscape``'s result: the PCA's explained variance and the loss range on the grid."""
    lines = []
    if plane == "pca":
        evr = r["explained_variance_ratio"]
        lines.append(f"PCA of {len(r['checkpoints'])} checkpoints, {r['n_params']:,} parameters: PC1 "
                     f"{100 * evr[0]:.1f} %, PC2 {100 * evr[1]:.1f} % of the variance" if len(evr) > 1 else "")
    flat = [v for row in r["landscape"]["loss"] for v in row]
    lines.append(f"landscape ({plane}, {grid}x{grid}): loss {min(flat):.4f} .. {max(flat):.4f} -> "
                 f"{Path(out) / 'landscape.json'}")
    return lines


def _count(n: float) -> str:
    """1234567 -> '1.23 M' (k, M, B, T): token and step counts at a glance."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:g}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def plan_lines(plan: Any) -> list[str]:
    """``qrobust train --plan``: batching, parameters, FLOPs per token, a table of runs, memory per device
    under DDP and FSDP, and GPU-hours on the planned devices."""
    b, p, f = plan.batching, plan.params, plan.flops_per_token
    lines = [f"plan of '{plan.name}': {plan.arch} {plan.preset}, seq_len {plan.seq_len}, vocab {plan.vocab_size} "
             f"({plan.vocab_source}), {plan.precision}",
             f"parameters: {p.total:,} ({p.non_embedding:,} non-embedding)",
             f"FLOPs per token: {f.training:.4g} training = 3 × ({2 * f.matmul_params:.4g} matmuls + "
             f"{f.attention:.4g} attention) forward",
             f"batch: {b.batch_size} × {plan.seq_len} = {plan.tokens_per_step:,} tokens per step = micro "
             f"{b.micro_batch_size} × grad_accum {b.grad_accum} × world {b.world_size}",
             "", f"{'run':<20} {'steps':>10} {'tokens':>10} {'tokens at end':>14} {'FLOPs':>10}"]
    for r in plan.runs:
        lines.append(f"{r.name:<20} {r.steps:>10,} {_count(r.tokens):>10} {_count(r.tokens_at_end):>14} "
                     f"{r.flops:>10.3g}")
    lines.append(f"{'total':<20} {plan.total_steps:>10,} {_count(plan.total_tokens):>10} {'':>14} "
                 f"{plan.total_flops:>10.3g}")
    if plan.averaged:
        lines.append(f"averaged while training (no extra FLOPs): {', '.join(plan.averaged)}")
    lines += ["", f"memory per device, GiB (estimate){'':<4} {'states':>8} {'autocast':>9} {'gathered':>9} "
                  f"{'activ.':>8} {'total':>8}"]
    for strategy, m in plan.memory.items():
        lines.append(f"  {strategy:<34} {_gib(m.states):>8} {_gib(m.autocast_copies):>9} {_gib(m.gathered):>9} "
                     f"{_gib(m.activations):>8} {_gib(m.total):>8}")
    lines += ["", f"GPU-hours at MFU {plan.mfu:g} ({plan.precision}), wall-clock on {b.world_size} device(s):"]
    for device, hours in plan.gpu_hours.items():
        lines.append(f"  {device:<10} " + ("no units for this precision" if hours is None else
                                           f"{_hours(hours)} GPU-h, {_hours(hours / b.world_size)} h wall-clock"))
    return lines
