"""One checkpoint's loss geometry: Hessian top eigenvalue(s), trace, per-layer sharpness, weight statistics.

This is what ``qrobust sharpness`` prints and what a sweep stores next to ΔQ L. Every number carries
what it was computed from (eval blocks, parameter subset, solver, products used, seconds).
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from ..config import GeometryConfig
from ..evaluate import NonFiniteLoss
from .eigen import lanczos, power_iteration
from .hessian import HessianOperator, select_parameters
from .trace import hutchinson, hutchpp
from .weights import weight_stats


def _top(op: HessianOperator, cfg: GeometryConfig, k: int, iters: int) -> dict[str, Any]:
    if cfg.method == "power":
        r = power_iteration(op.matvec, op.dim, iters=iters, tol=cfg.tol, seed=cfg.seed, device=op.device)
    else:
        r = lanczos(op.matvec, op.dim, k=k, iters=iters, tol=cfg.tol, seed=cfg.seed, device=op.device)
    return r.to_dict()


def _name(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__


def measure(model: nn.Module, blocks: torch.Tensor, cfg: GeometryConfig) -> dict[str, Any]:
    """Geometry of ``model`` on ``blocks`` ([n, L] token ids) as a JSON-ready dict."""
    from ..checks import check_seq_len
    check_seq_len(getattr(model, "config", None), int(blocks.shape[1]), _name(model))
    out: dict[str, Any] = {"config": cfg.model_dump(), "n_blocks": int(blocks.shape[0]),
                           "seq_len": int(blocks.shape[1])}
    if cfg.weight_stats:
        out["weights"] = weight_stats(model, cfg.k_sigma)
    params = select_parameters(model, cfg.params)
    out["n_params"] = sum(p.numel() for _, p in params)
    if cfg.sharpness or cfg.trace != "none":
        with HessianOperator(model, blocks, params, cfg.batch_size) as op:
            t0 = time.perf_counter()
            out["loss"], g = op.loss_and_grad()
            if not math.isfinite(out["loss"]):  # overflowing outputs: no curvature to measure, nothing to record
                raise NonFiniteLoss(f"checkpoint '{_name(model)}': the loss is not a finite number "
                                    f"({out['loss']}); its outputs overflow, so its geometry cannot be measured")
            out["grad_norm"] = float(g.norm())
            out["grad_seconds"] = time.perf_counter() - t0
            if cfg.sharpness:
                t0 = time.perf_counter()
                out["eigen"] = _top(op, cfg, cfg.top_k, cfg.iters)
                out["eigen"]["seconds"] = time.perf_counter() - t0
                out["lambda_max"] = out["eigen"]["values"][0]
            if cfg.trace != "none":
                t0 = time.perf_counter()
                fn = hutchpp if cfg.trace == "hutch++" else hutchinson
                kw = {"matvecs": cfg.trace_matvecs} if cfg.trace == "hutch++" else {"probes": cfg.trace_matvecs}
                tr = fn(op.matvec, op.dim, seed=cfg.seed, device=op.device, **kw).to_dict()
                tr["seconds"] = time.perf_counter() - t0
                out["trace"] = tr
    if cfg.per_layer:
        out["layers"] = {}
        for name, _ in select_parameters(model, ["linear"]):
            with HessianOperator(model, blocks, select_parameters(model, [name]), cfg.batch_size) as op:
                out["layers"][name] = _top(op, cfg, 1, cfg.per_layer_iters)
    return out
