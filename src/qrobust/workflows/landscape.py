"""2-D loss landscapes: the loss on a grid in a plane through weight space, with the trajectory drawn on it.

Two planes:
- ``pca``: through the trajectory's mean, spanned by its first two principal directions (unit vectors),
  so grid coordinates are the checkpoints' own PCA coordinates and the checkpoints sit on the map
  (up to the variance the plane does not capture, which is reported).
- ``random``: through one checkpoint, spanned by two seeded Gaussian directions, filter-normalised
  (Li et al. 2018): each row of a weight matrix is rescaled to the norm of the same row of the
  weights, and 1-D tensors (biases, norms) get no direction; grid coordinates are in those units.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..evaluate import evaluate_loss
from ..geometry.pca import TrajectoryPCA, directions


@dataclass
class Landscape:
    xs: list[float]
    ys: list[float]
    loss: list[list[float]]  # loss[j][i] at (xs[i], ys[j])
    plane: str
    center: str
    points: list[dict[str, Any]]  # checkpoints with their plane coordinates (pca plane)
    explained: list[float]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def filter_normalized(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A random direction with each row scaled to the norm of that row of ``weights``; 1-D tensors: zero."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        d = torch.randn(w.shape, generator=g, dtype=torch.float32)
        if w.ndim < 2:
            out[name] = torch.zeros_like(w, dtype=torch.float32)
            continue
        rows_w = w.float().reshape(w.shape[0], -1).norm(dim=1, keepdim=True)
        rows_d = d.reshape(w.shape[0], -1).norm(dim=1, keepdim=True).clamp_min(1e-12)
        out[name] = (d.reshape(w.shape[0], -1) * rows_w / rows_d).reshape(w.shape)
    return out


def _span(values: list[float], margin: float, n: int) -> list[float]:
    lo, hi = min(values), max(values)
    pad = margin * max(hi - lo, 1e-8)
    return torch.linspace(lo - pad, hi + pad, n).tolist()


@torch.no_grad()
def grid_losses(model: nn.Module, center: dict[str, torch.Tensor], d1: dict[str, torch.Tensor],
                d2: dict[str, torch.Tensor], xs: list[float], ys: list[float], blocks: torch.Tensor,
                batch_size: int = 8, progress: bool = False) -> list[list[float]]:
    """Loss of θ = center + x·d1 + y·d2 at every grid point (the model's other tensors untouched)."""
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    missing = [n for n in center if n not in params]
    if missing:
        raise ConfigError(f"tensor '{missing[0]}' of the checkpoints is not a parameter of the model")
    originals = {n: params[n].detach().clone() for n in center}
    out = []
    bar = tqdm(total=len(xs) * len(ys), desc="landscape", disable=not progress, unit="pt")
    try:
        for y in ys:
            row = []
            for x in xs:
                for n, c in center.items():
                    params[n].copy_((c + x * d1[n] + y * d2[n]).to(params[n].dtype))
                row.append(evaluate_loss(model, blocks, batch_size, name=f"the landscape point ({x:g}, {y:g})").loss)
                bar.update(1)
            out.append(row)
    finally:
        for n, t in originals.items():
            params[n].copy_(t)
        bar.close()
    return out


def param_names_of(model: nn.Module, folder: Path, keys: list[str]) -> dict[str, str]:
    """Safetensors key -> model parameter/buffer name. Keys are usually the names themselves; a key that
    transformers renames on load (GPT-NeoX's ``embed_out`` is ``lm_head`` in transformers 5) is matched
    to the one unmatched tensor of the loaded model with the same shape and identical values."""
    from ..averaging.stream import tensor_files
    from safetensors import safe_open
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    mapping = {k: k for k in keys if k in state}
    left = {n: t for n, t in state.items() if n not in mapping.values()}
    files = tensor_files(folder)
    for k in keys:
        if k in mapping:
            continue
        with safe_open(str(files[k]), "pt") as h:
            t = h.get_tensor(k)
        hits = [n for n, v in left.items() if v.shape == t.shape and torch.equal(v.detach().to(t.dtype), t)]
        if len(hits) != 1:
            raise ConfigError(f"cannot map checkpoint tensor '{k}' onto the model's parameters (transformers "
                              "converts it on load); restrict the plane with --params")
        mapping[k] = hits[0]
        del left[hits[0]]
    return mapping


def pca_landscape(model: nn.Module, pca: TrajectoryPCA, blocks: torch.Tensor, grid: int = 11, margin: float = 0.25,
                  batch_size: int = 8, runs: list[str] | None = None, steps: list[int] | None = None,
                  progress: bool = False, parents: list[tuple[str, int] | None] | None = None) -> Landscape:
    d1, d2 = directions(pca, 2)
    names = param_names_of(model, pca.folders[-1], pca.tensors)
    center = {names[k]: v for k, v in pca.mean.items()}
    d1, d2 = ({names[k]: v for k, v in d.items()} for d in (d1, d2))
    xs = _span(pca.coords[:, 0].tolist(), margin, grid)
    ys = _span(pca.coords[:, 1].tolist(), margin, grid)
    loss = grid_losses(model, center, d1, d2, xs, ys, blocks, batch_size, progress)
    points = [{"name": n, "x": float(pca.coords[i, 0]), "y": float(pca.coords[i, 1]),
               "run": runs[i] if runs else None, "step": steps[i] if steps else None}
              for i, n in enumerate(pca.names)]
    for p, q in zip(points, parents or [None] * len(points)):
        if q:
            p["parent"], p["parent_step"] = q
    return Landscape(xs, ys, loss, "pca", "mean of the checkpoints", points, pca.explained_variance_ratio[:2])


def random_landscape(model: nn.Module, center_name: str, blocks: torch.Tensor, grid: int = 11, span: float = 1.0,
                     seed: int = 0, batch_size: int = 8, params: list[str] | None = None,
                     progress: bool = False) -> Landscape:
    weights = {n: p.detach().float().clone() for n, p in model.named_parameters()
               if not params or any(fnmatch.fnmatchcase(n, pat) for pat in params)}
    if not weights:
        raise ConfigError(f"no parameter matches {params}")
    d1, d2 = filter_normalized(weights, seed), filter_normalized(weights, seed + 1)
    xs = torch.linspace(-span, span, grid).tolist()
    loss = grid_losses(model, weights, d1, d2, xs, xs, blocks, batch_size, progress)
    return Landscape(xs, xs, loss, "random", center_name, [{"name": center_name, "x": 0.0, "y": 0.0}], [])


def trajectory_landscape(source: str | dict, out: str | Path, plane: str = "pca", runs: list[str] | None = None,
                         grid: int = 11, margin: float = 0.25, span: float = 1.0, center: str | None = None,
                         n_blocks: int = 8, seq_len: int | None = None, batch_size: int = 8,
                         params: list[str] | None = None, seed: int = 0, progress: bool = True,
                         allow_pickle: bool = False, trust_remote_code: bool = False) -> dict[str, Any]:
    """PCA of a trajectory (its runs, or ``runs``) and a loss landscape; writes ``landscape.json`` and figures."""
    import json

    from ..api import eval_blocks
    from ..data.tokenizer import load_tokenizer
    from ..models import check_vocab, load_checkpoint
    from ..reporting.landscape import contour_figure, projection_figure
    from ..sources import load_source, resolve_checkpoint
    from ..io.atomic import write_text
    from ..geometry.pca import trajectory_pca

    if plane not in ("pca", "random"):
        raise ConfigError(f"plane must be 'pca' or 'random', got {plane!r}")
    if grid < 2:
        raise ConfigError(f"the grid needs at least 2 points per side, got {grid}")
    traj = load_source(source)
    cks = [c for c in traj if runs is None or c.run in runs]
    if not cks:
        raise ConfigError(f"no checkpoint of '{traj.name}' is in run(s) {runs}; known runs: "
                          f"{', '.join(sorted({c.run for c in traj}))}")
    folders = [resolve_checkpoint(c, allow_pickle) for c in cks]
    out = Path(out)
    result: dict[str, Any] = {"trajectory": traj.name, "source": str(source) if isinstance(source, str) else source}
    if plane == "pca":
        pca = trajectory_pca(folders, [c.name for c in cks], params)
        result.update(pca.to_dict())
        result["points"] = [{"name": c.name, "run": c.run, "step": c.step, "parent": c.parent,
                             "parent_step": c.parent_step, "x": float(pca.coords[i, 0]),
                             "y": float(pca.coords[i, 1]) if pca.coords.shape[1] > 1 else 0.0}
                            for i, c in enumerate(cks)]
        like = folders[-1]
    else:
        names = {c.name: f for c, f in zip(cks, folders)}
        key = center or cks[-1].name
        if key not in names:
            raise ConfigError(f"--center '{key}' is not a checkpoint of '{traj.name}'; e.g. '{cks[-1].name}'")
        like = names[key]
    model = load_checkpoint(like, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    check_vocab(model, load_tokenizer(like, trust_remote_code), like)
    blocks = eval_blocks(like, n_blocks=n_blocks, seq_len=seq_len, trust_remote_code=trust_remote_code)
    if plane == "pca":
        land = pca_landscape(model, pca, blocks, grid, margin, batch_size, [c.run for c in cks],
                             [c.step for c in cks], progress,
                             [(c.parent, c.parent_step) if c.parent else None for c in cks])
    else:
        land = random_landscape(model, key, blocks, grid, span, seed, batch_size, params, progress)
    result["landscape"] = land.to_dict()
    result["eval"] = {"n_blocks": int(blocks.shape[0]), "seq_len": int(blocks.shape[1])}
    out.mkdir(parents=True, exist_ok=True)
    title = f"{traj.name}: loss landscape ({'PCA plane' if plane == 'pca' else 'random directions'})"
    figs = [contour_figure(result["landscape"], out / f"landscape_{plane}.png", title)]
    if plane == "pca":
        figs.append(projection_figure(result, out / "pca_projection.png", f"{traj.name}: trajectory PCA"))
    result["figures"] = [str(f.path) for f in figs]
    write_text(out / "landscape.json", json.dumps(result, indent=1))
    return result
