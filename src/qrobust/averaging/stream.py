"""Weighted means of checkpoints, streamed tensor by tensor from safetensors.

Peak memory is one model in its own dtype (the result) plus one fp32 accumulator and two input tensors,
whatever the number of inputs: inputs are memory-mapped and read one tensor at a time. Means are
accumulated in fp32 and written in the source dtype. Tensors that are bit-identical in every input
(persistent buffers such as masks or rotary frequencies, tied or frozen weights) are copied exactly;
non-float tensors that differ cannot be averaged and are refused, as are inputs whose configs, tensor
names, shapes or dtypes differ.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io.atomic import atomic_dir
from ..models import read_model_config, weight_safetensors
from ..io.files import STATE_FILE

# config keys that do not change the architecture
_CONFIG_NOISE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "use_cache"}
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model")
PROVENANCE = "qrobust_average.json"


def tensor_files(folder: Path) -> dict[str, Path]:
    """tensor name -> safetensors file holding it (single file or a sharded index)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        wm = json.loads(index.read_text()).get("weight_map", {})
        return {k: folder / v for k, v in wm.items()}
    files = weight_safetensors(folder)
    if not files:
        raise CheckpointError(f"'{folder}' has no *.safetensors weights to average (pickle weights: re-save as safetensors)")
    from safetensors import safe_open
    out: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                out[k] = f
    return out


def _arch(folder: Path) -> dict[str, Any]:
    return {k: v for k, v in read_model_config(folder).items() if k not in _CONFIG_NOISE}


def check_compatible(folders: list[Path]) -> None:
    ref = _arch(folders[0])
    for f in folders[1:]:
        other = _arch(f)
        diff = sorted(k for k in set(ref) | set(other) if ref.get(k) != other.get(k))
        if diff:
            k = diff[0]
            raise CheckpointError(f"cannot average different architectures: '{folders[0]}' has {k}={ref.get(k)!r}, "
                                  f"'{f}' has {k}={other.get(k)!r}")


def weighted_mean(folders: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """Σ wᵢ·θᵢ per tensor (weights must sum to 1), fp32 accumulation, result in the source dtype."""
    if not folders:
        raise CheckpointError("nothing to average: no input checkpoints")
    if len(weights) != len(folders) or abs(sum(weights) - 1) > 1e-6 or min(weights) < 0:
        raise CheckpointError("averaging weights must be one non-negative weight per input, summing to 1")
    folders = [Path(f) for f in folders]
    check_compatible(folders)
    from safetensors import safe_open
    indexes = [tensor_files(f) for f in folders]
    names = list(indexes[0])
    for f, idx in zip(folders[1:], indexes[1:]):
        missing = [n for n in names if n not in idx] or [n for n in idx if n not in indexes[0]]
        if missing:
            where = f if missing[0] not in idx else folders[0]
            raise CheckpointError(f"tensor '{missing[0]}' is missing from '{where}'; the checkpoints do not match")
    out: dict[str, torch.Tensor] = {}

    def read(i: int, name: str) -> torch.Tensor:
        # open per read: a mapping kept open keeps every page it has served resident, which with many
        # inputs would add up to all of them; opening costs only a header parse
        with safe_open(str(indexes[i][name]), "pt") as h:
            sl = h.get_slice(name)
            shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
            if i == 0:
                meta[name] = (shape, dtype)
            elif shape != meta[name][0]:
                raise CheckpointError(f"tensor '{name}' has shape {list(shape)} in '{folders[i]}' but "
                                      f"{list(meta[name][0])} in '{folders[0]}'; the checkpoints do not match")
            elif dtype != meta[name][1]:
                raise CheckpointError(f"tensor '{name}' is {dtype} in '{folders[i]}' but {meta[name][1]} in "
                                      f"'{folders[0]}'; convert the checkpoints to one dtype first")
            return h.get_tensor(name)

    meta: dict[str, tuple] = {}
    for name in names:
        first = read(0, name)
        same = True
        acc = first.float() * weights[0] if first.is_floating_point() else None
        for i in range(1, len(folders)):
            t = read(i, name)
            if same and not torch.equal(t, first):
                same = False
            if acc is not None:
                acc.add_(t.float(), alpha=weights[i])
            elif not same:
                raise CheckpointError(f"tensor '{name}' ({first.dtype}) differs between '{folders[0]}' and "
                                      f"'{folders[i]}' and is not floating point: it cannot be averaged")
            del t
        out[name] = first if same or acc is None else acc.to(first.dtype)
        del acc
    return out


def write_checkpoint(tensors: dict[str, torch.Tensor], like: Path, out: Path, provenance: dict[str, Any],
                     state: dict[str, Any] | None = None) -> Path:
    """Weights + the side files (config, tokenizer) of ``like`` + provenance, as one atomic folder."""
    from safetensors.torch import save_file
    with atomic_dir(Path(out), "averaged checkpoint") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        for name in SIDE_FILES:
            if (Path(like) / name).is_file():
                shutil.copy2(Path(like) / name, tmp / name)
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=1, sort_keys=True))
        if state is not None:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
    return Path(out)
