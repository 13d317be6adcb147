"""Averagers (a registry, like quantizers): which checkpoints are averaged with which weights.

- ``lawa``: along each run, the uniform mean of the last ``window`` checkpoints (every ``stride``-th),
  at every position that has them: a whole LAWA trajectory beside the original one (run ``<run>-lawa<L>``).
- ``ema``: along each run, the exponential moving average over checkpoints, e₀ = θ₀,
  eᵢ = β·eᵢ₋₁ + (1 − β)·θᵢ, i.e. weights (1 − β)·β^(i−j) for j ≥ 1 and β^i for θ₀ (run ``<run>-ema<β>``).
- ``soup``: the uniform mean of the ingredients (the last checkpoint of every run in the sources).
- ``greedy-soup``: ingredients sorted by held-out loss; each is added only if the held-out loss of the
  uniform mean improves (Wortsman et al. 2022).
Each job names its inputs and weights; ``run.py`` streams them and writes checkpoints with provenance.
Each averager is registered by name (``registry.py``); these are the built-in ones.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..config import AverageConfig
from ..errors import ConfigError
from ..trajectory import Checkpoint, Trajectory
from .registry import AverageJob, register_averager


def by_run(traj: Trajectory) -> dict[str, list[Checkpoint]]:
    runs: dict[str, list[Checkpoint]] = {}
    for c in traj:
        runs.setdefault(c.run, []).append(c)
    return {r: sorted(cs, key=lambda c: c.step) for r, cs in runs.items()}


def plan_lawa(traj: Trajectory, window: int, stride: int = 1, runs: list[str] | None = None) -> list[AverageJob]:
    if window < 1 or stride < 1:
        raise ConfigError("LAWA needs window >= 1 and stride >= 1")
    jobs = []
    for run, cks in by_run(traj).items():
        if runs is not None and run not in runs:
            continue
        span = (window - 1) * stride
        if span >= len(cks):
            raise ConfigError(f"LAWA window {window} (stride {stride}) needs {span + 1} checkpoints but run '{run}' "
                              f"of '{traj.name}' has {len(cks)}; use a smaller window")
        name = f"{run}-lawa{window}" + (f"s{stride}" if stride > 1 else "")
        for i in range(span, len(cks)):
            members = cks[i - span: i + 1: stride]
            jobs.append(AverageJob(name, cks[i].step, members, [1 / window] * window, cks[i],
                                   {"averager": "lawa", "window": window, "stride": stride}))
    return jobs


def ema_weights(n: int, beta: float) -> list[float]:
    """Weights of θ₀..θₙ₋₁ in the offline EMA after n checkpoints."""
    return [beta ** (n - 1)] + [(1 - beta) * beta ** (n - 1 - j) for j in range(1, n)]


def plan_ema(traj: Trajectory, beta: float, runs: list[str] | None = None) -> list[AverageJob]:
    if not 0 <= beta < 1:
        raise ConfigError(f"EMA needs 0 <= beta < 1, got {beta}")
    jobs = []
    for run, cks in by_run(traj).items():
        if runs is not None and run not in runs:
            continue
        for i in range(len(cks)):
            jobs.append(AverageJob(f"{run}-ema{beta:g}", cks[i].step, cks[: i + 1], ema_weights(i + 1, beta), cks[i],
                                   {"averager": "ema", "beta": beta}))
    return jobs


def ingredients(trajs: list[Trajectory]) -> list[Checkpoint]:
    """The last checkpoint of every run of every source."""
    out = []
    for t in trajs:
        for cks in by_run(t).values():
            out.append(cks[-1])
    return out


def plan_soup(trajs: list[Trajectory]) -> list[AverageJob]:
    ing = ingredients(trajs)
    if len(ing) < 2:
        raise ConfigError(f"a soup needs at least 2 ingredients (the last checkpoint of each run); got {len(ing)}")
    return [AverageJob("soup", max(c.step for c in ing), ing, [1 / len(ing)] * len(ing), ing[0],
                       {"averager": "soup", "ingredients": len(ing)}, across_runs=True)]


def plan_greedy_soup(trajs: list[Trajectory]) -> list[AverageJob]:
    """One job whose inputs are all ingredients; which are kept is decided when the soup is made (it needs
    held-out losses)."""
    ing = ingredients(trajs)
    if len(ing) < 2:
        raise ConfigError(f"a greedy soup needs at least 2 ingredients (the last checkpoint of each run); "
                          f"got {len(ing)}")
    return [AverageJob("greedy-soup", max(c.step for c in ing), ing, [1 / len(ing)] * len(ing), ing[0],
                       {"averager": "greedy-soup", "ingredients": len(ing)}, greedy=True, across_runs=True)]


def greedy_soup(ing: list[Any], loss_of_mean: Callable[[list[Any]], float],
                single_losses: list[float]) -> tuple[list[int], list[dict[str, Any]]]:
    """Indices of the chosen ingredients and the decision log.

    Ingredients are tried in order of their own held-out loss; one is kept only if the loss of the
    uniform mean of the kept ones plus it is strictly lower than the current soup's."""
    order = sorted(range(len(ing)), key=lambda i: (single_losses[i], i))
    kept = [order[0]]
    best = single_losses[order[0]]
    log = [{"ingredient": order[0], "loss": best, "kept": True}]
    for i in order[1:]:
        loss = loss_of_mean([ing[j] for j in kept + [i]])
        keep = loss < best
        log.append({"ingredient": i, "loss": loss, "kept": keep})
        if keep:
            kept.append(i)
            best = loss
    return kept, log


def mean_of(tensors: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform mean of in-memory state dicts (fp32 accumulation): the reference the streaming path must match."""
    out = {}
    for k, t0 in tensors[0].items():
        if not t0.is_floating_point():
            out[k] = t0
            continue
        acc = torch.zeros_like(t0, dtype=torch.float32)
        for sd in tensors:
            acc.add_(sd[k].float(), alpha=1 / len(tensors))
        out[k] = acc.to(t0.dtype)
    return out


def one_trajectory(trajs: list[Trajectory], averager: str) -> Trajectory:
    """The single trajectory an along-the-run averager works on."""
    if len(trajs) != 1:
        raise ConfigError(f"{averager} averages along one trajectory; name exactly one source")
    return trajs[0]


@register_averager("lawa")
def lawa(trajs: list[Trajectory], spec: AverageConfig) -> list[AverageJob]:
    return plan_lawa(one_trajectory(trajs, "lawa"), spec.window, spec.stride, spec.runs)


@register_averager("ema")
def ema(trajs: list[Trajectory], spec: AverageConfig) -> list[AverageJob]:
    return plan_ema(one_trajectory(trajs, "ema"), spec.beta, spec.runs)


@register_averager("soup")
def soup(trajs: list[Trajectory], spec: AverageConfig) -> list[AverageJob]:
    return plan_soup(trajs)


@register_averager("greedy-soup")
def greedy(trajs: list[Trajectory], spec: AverageConfig) -> list[AverageJob]:
    return plan_greedy_soup(trajs)
