"""Exact PCA of a training trajectory through the Gram matrix of its checkpoints, streamed from safetensors.

With N checkpoints of P parameters (N ≪ P), the centred data X (N × P) has the same non-zero singular
values as its N × N Gram matrix G = X Xᵀ, accumulated tensor by tensor (and row chunk by row chunk for
large tensors), so memory is N × one chunk plus the mean, never N models. From G = U Λ Uᵀ:
explained-variance ratios λ_k / Σλ, checkpoint coordinates σ_k·U_ik on the unit principal directions,
and the directions themselves d_k = Xᵀ u_k / σ_k (a second streamed pass, only when asked).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from ..averaging.stream import check_compatible, tensor_files
from ..errors import CheckpointError, ConfigError

CHUNK = 1 << 22  # elements per checkpoint read at once (N x CHUNK float64 in memory)


@dataclass
class TrajectoryPCA:
    names: list[str]  # checkpoint names, in input order
    folders: list[Path]
    tensors: list[str]  # tensor names included
    n_params: int
    eigenvalues: list[float]  # of the Gram matrix, descending (= squared singular values)
    coords: torch.Tensor  # [N, N] coordinates on the principal directions (columns by component)
    mean: dict[str, torch.Tensor] = field(repr=False)

    @property
    def explained_variance_ratio(self) -> list[float]:
        total = sum(self.eigenvalues)
        return [v / total if total > 0 else 0.0 for v in self.eigenvalues]

    def to_dict(self, k: int = 3) -> dict:
        k = min(k, len(self.eigenvalues))
        return {"checkpoints": self.names, "n_params": self.n_params, "n_tensors": len(self.tensors),
                "explained_variance_ratio": self.explained_variance_ratio,
                "coords": self.coords[:, :k].tolist()}


def _selected(folder_index: dict[str, Path], patterns: list[str] | None) -> list[str]:
    out = []
    for name, f in folder_index.items():
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        with safe_open(str(f), "pt") as h:
            if h.get_slice(name).get_dtype() in ("F64", "F32", "F16", "BF16"):
                out.append(name)
    if not out:
        raise ConfigError(f"no floating-point tensor matches {patterns}; check the parameter patterns")
    return out


def _chunks(indexes: list[dict[str, Path]], name: str) -> Iterator[tuple[slice, torch.Tensor]]:
    """(row slice, [N, rows*cols] float64) over a tensor of every checkpoint, CHUNK elements at a time."""
    with safe_open(str(indexes[0][name]), "pt") as h:
        shape = h.get_slice(name).get_shape()
    rows = shape[0] if shape else 1
    per_row = max(1, int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
    step = max(1, CHUNK // per_row)
    for r0 in range(0, rows, step):
        sl = slice(r0, min(rows, r0 + step))
        parts = []
        for idx in indexes:
            with safe_open(str(idx[name]), "pt") as h:
                s = h.get_slice(name)
                if tuple(s.get_shape()) != tuple(shape):
                    raise CheckpointError(f"tensor '{name}' has shape {s.get_shape()} in '{idx[name].parent}' but "
                                          f"{shape} elsewhere; the checkpoints do not match")
                t = s[sl] if shape else h.get_tensor(name)
            parts.append(t.double().reshape(-1))
        yield sl, torch.stack(parts)


def trajectory_pca(folders: list[Path], names: list[str] | None = None,
                   params: list[str] | None = None) -> TrajectoryPCA:
    """PCA of the checkpoints in ``folders`` over the float tensors matching ``params`` (default all)."""
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise ConfigError(f"a trajectory PCA needs at least 2 checkpoints, got {len(folders)}")
    check_compatible(folders)
    indexes = [tensor_files(f) for f in folders]
    tensors = _selected(indexes[0], params)
    n = len(folders)
    gram = torch.zeros(n, n, dtype=torch.float64)
    mean: dict[str, torch.Tensor] = {}
    n_params = 0
    for name in tensors:
        with safe_open(str(indexes[0][name]), "pt") as h:
            s = h.get_slice(name)
            shape = s.get_shape()
        parts = []
        for sl, X in _chunks(indexes, name):
            m = X.mean(0)
            Xc = X - m
            gram += Xc @ Xc.T
            parts.append(m)
            n_params += X.shape[1]
        mean[name] = torch.cat(parts).float().reshape(shape)
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    coords = evecs * evals.sqrt()  # x_i · d_k = σ_k U_ik
    return TrajectoryPCA(names or [f.name for f in folders], folders, tensors, n_params, evals.tolist(), coords, mean)


def directions(pca: TrajectoryPCA, k: int = 2) -> list[dict[str, torch.Tensor]]:
    """Unit principal directions d_1..d_k in parameter space (fp32 tensors by name), one streamed pass."""
    if k > len(pca.eigenvalues) or pca.eigenvalues[k - 1] <= 0:
        raise ConfigError(f"the trajectory spans fewer than {k} directions; add checkpoints")
    sig = torch.tensor(pca.eigenvalues[:k], dtype=torch.float64).sqrt()
    U = pca.coords[:, :k] / sig  # [N, k]
    indexes = [tensor_files(f) for f in pca.folders]
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(k)]
    for name in pca.tensors:
        shape = pca.mean[name].shape
        parts: list[list[torch.Tensor]] = [[] for _ in range(k)]
        for _, X in _chunks(indexes, name):
            Xc = X - X.mean(0)
            D = (U.T @ Xc) / sig[:, None]  # [k, chunk]
            for j in range(k):
                parts[j].append(D[j])
        for j in range(k):
            out[j][name] = torch.cat(parts[j]).float().reshape(shape)
    return out
