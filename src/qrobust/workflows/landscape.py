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
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.checkpoint_blocks import eval_blocks
from ..data.tokenizer import load_tokenizer
from ..errors import ConfigError
from ..evaluate import evaluate_loss
from ..geometry.pca import TrajectoryPCA, directions, trajectory_pca
from ..io.atomic import write_text
from ..models import check_vocab, load_checkpoint
from ..reporting.landscape import contour_figure, projection_figure
from ..sources import load_source, resolve_checkpoint
from ..trajectory import Checkpoint
from .options import LandscapeOptions, options_only


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


@dataclass(frozen=True)
class Plane:
    """The plane θ = center + x·d1 + y·d2 (tensors by model parameter name)."""
    center: dict[str, torch.Tensor]
    d1: dict[str, torch.Tensor]
    d2: dict[str, torch.Tensor]


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
def grid_losses(model: nn.Module, plane: Plane, xs: list[float], ys: list[float], blocks: torch.Tensor,
                batch_size: int = 8, progress: bool = False) -> list[list[float]]:
    """Loss of θ = center + x·d1 + y·d2 at every grid point (the model's other tensors untouched)."""
    center, d1, d2 = plane.center, plane.d1, plane.d2
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


def pca_landscape(model: nn.Module, pca: TrajectoryPCA, blocks: torch.Tensor, opts: LandscapeOptions | None = None,
                  cks: list[Checkpoint] | None = None) -> Landscape:
    """The loss on a grid in the trajectory's PCA plane; ``cks`` (the checkpoints of ``pca``, in order) name
    each point's run, step and parent."""
    opts = opts or LandscapeOptions()
    d1, d2 = directions(pca, 2)
    names = param_names_of(model, pca.folders[-1], pca.tensors)
    center = {names[k]: v for k, v in pca.mean.items()}
    d1, d2 = ({names[k]: v for k, v in d.items()} for d in (d1, d2))
    xs = _span(pca.coords[:, 0].tolist(), opts.margin, opts.grid)
    ys = _span(pca.coords[:, 1].tolist(), opts.margin, opts.grid)
    loss = grid_losses(model, Plane(center, d1, d2), xs, ys, blocks, opts.batch_size, opts.progress)
    points = [{"name": n, "x": float(pca.coords[i, 0]), "y": float(pca.coords[i, 1]),
               "run": cks[i].run if cks else None, "step": cks[i].step if cks else None}
              for i, n in enumerate(pca.names)]
    for p, c in zip(points, cks or [None] * len(points)):
        if c is not None and c.parent:
            p["parent"], p["parent_step"] = c.parent, c.parent_step
    return Landscape(xs, ys, loss, "pca", "mean of the checkpoints", points, pca.explained_variance_ratio[:2])


def random_landscape(model: nn.Module, center_name: str, blocks: torch.Tensor,
                     opts: LandscapeOptions | None = None) -> Landscape:
    """The loss on a grid through the model's weights along two seeded filter-normalised directions."""
    opts = opts or LandscapeOptions()
    params = opts.params
    weights = {n: p.detach().float().clone() for n, p in model.named_parameters()
               if not params or any(fnmatch.fnmatchcase(n, pat) for pat in params)}
    if not weights:
        raise ConfigError(f"no parameter matches {params}")
    d1, d2 = filter_normalized(weights, opts.seed), filter_normalized(weights, opts.seed + 1)
    xs = torch.linspace(-opts.span, opts.span, opts.grid).tolist()
    loss = grid_losses(model, Plane(weights, d1, d2), xs, xs, blocks, opts.batch_size, opts.progress)
    return Landscape(xs, xs, loss, "random", center_name, [{"name": center_name, "x": 0.0, "y": 0.0}], [])


def _check(opts: LandscapeOptions) -> None:
    if opts.plane not in ("pca", "random"):
        raise ConfigError(f"plane must be 'pca' or 'random', got {opts.plane!r}")
    if opts.grid < 2:
        raise ConfigError(f"the grid needs at least 2 points per side, got {opts.grid}")


def _checkpoints(traj: Any, opts: LandscapeOptions) -> list[Checkpoint]:
    """The trajectory's checkpoints in ``opts.runs`` (all runs by default), refused when none is."""
    cks = [c for c in traj if opts.runs is None or c.run in opts.runs]
    if not cks:
        raise ConfigError(f"no checkpoint of '{traj.name}' is in run(s) {opts.runs}; known runs: "
                          f"{', '.join(sorted({c.run for c in traj}))}")
    return cks


def _pca_points(pca: TrajectoryPCA, cks: list[Checkpoint]) -> list[dict[str, Any]]:
    return [{"name": c.name, "run": c.run, "step": c.step, "parent": c.parent, "parent_step": c.parent_step,
             "x": float(pca.coords[i, 0]), "y": float(pca.coords[i, 1]) if pca.coords.shape[1] > 1 else 0.0}
            for i, c in enumerate(cks)]


def _random_center(traj: Any, cks: list[Checkpoint], folders: list[Path], center: str | None) -> tuple[str, Path]:
    names = {c.name: f for c, f in zip(cks, folders)}
    key = center or cks[-1].name
    if key not in names:
        raise ConfigError(f"--center '{key}' is not a checkpoint of '{traj.name}'; e.g. '{cks[-1].name}'")
    return key, names[key]


def _write(result: dict[str, Any], traj_name: str, out: Path, plane: str) -> None:
    """The figures and ``landscape.json`` (with the figures' paths) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    title = f"{traj_name}: loss landscape ({'PCA plane' if plane == 'pca' else 'random directions'})"
    figs = [contour_figure(result["landscape"], out / f"landscape_{plane}.png", title)]
    if plane == "pca":
        figs.append(projection_figure(result, out / "pca_projection.png", f"{traj_name}: trajectory PCA"))
    result["figures"] = [str(f.path) for f in figs]
    write_text(out / "landscape.json", json.dumps(result, indent=1))


def trajectory_landscape(source: str | dict, out: str | Path, options: LandscapeOptions | None = None,
                         **settings: Any) -> dict[str, Any]:
    """PCA of a trajectory (its runs, or ``runs``) and a loss landscape; writes ``landscape.json`` and figures.
    ``settings``: :class:`LandscapeOptions` fields (plane, runs, grid, margin, span, center, n_blocks, ...)."""
    opts = options_only(LandscapeOptions, options, settings, "landscape setting")
    _check(opts)
    traj = load_source(source)
    cks = _checkpoints(traj, opts)
    folders = [resolve_checkpoint(c, opts.allow_pickle) for c in cks]
    result: dict[str, Any] = {"trajectory": traj.name, "source": str(source) if isinstance(source, str) else source}
    if opts.plane == "pca":
        pca = trajectory_pca(folders, [c.name for c in cks], opts.params)
        result.update(pca.to_dict())
        result["points"] = _pca_points(pca, cks)
        like = folders[-1]
    else:
        key, like = _random_center(traj, cks, folders, opts.center)
    model = load_checkpoint(like, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
    check_vocab(model, load_tokenizer(like, opts.trust_remote_code), like)
    blocks = eval_blocks(like, n_blocks=opts.n_blocks, seq_len=opts.seq_len, trust_remote_code=opts.trust_remote_code)
    land = pca_landscape(model, pca, blocks, opts, cks) if opts.plane == "pca" else \
        random_landscape(model, key, blocks, opts)
    result["landscape"] = land.to_dict()
    result["eval"] = {"n_blocks": int(blocks.shape[0]), "seq_len": int(blocks.shape[1])}
    _write(result, traj.name, Path(out), opts.plane)
    return result
