"""Reading a checkpoint for layer streaming: the model skeleton on ``meta`` (no memory), and its tensors
from the safetensors files one module at a time, by the names the model gives them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ....checks import ST_DTYPES as _ST_DTYPES, file_index, renamings, safetensors_header as _header  # noqa: F401
from ....errors import CheckpointError
from ....models import remote_code_error, remote_code_refused, weight_safetensors


class WeightSource:
    """Tensors of a checkpoint's safetensors files by the model's parameter names, read on demand.

    Read with plain ``pread`` into a fresh buffer rather than through ``safetensors.safe_open``, whose
    memory map keeps every page it ever touched resident in this process: for a model streamed block
    by block that would grow to the whole file, which is what streaming is meant to avoid."""

    def __init__(self, folder: Path, model: nn.Module | None = None):
        files = weight_safetensors(folder)
        if not files:
            raise CheckpointError(f"'{folder}' has no *.safetensors weights; layer streaming reads safetensors only")
        if model is not None:  # by the model's names, as transformers would load them (checks.file_index)
            self.where: dict[str, tuple[Path, int, dict[str, Any]]] = file_index(files, model)
        else:
            self.where = {key: (f, start, entry) for f in files for start, head in [_header(f)]
                          for key, entry in head.items()}

    def get(self, name: str) -> torch.Tensor:
        import os
        if name not in self.where:
            raise CheckpointError(f"tensor '{name}' is not in the checkpoint's safetensors files")
        path, start, entry = self.where[name]
        dtype = _ST_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"tensor '{name}' has dtype {entry['dtype']}, which layer streaming does not read")
        a, b = entry["data_offsets"]
        buf = bytearray(b - a)
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [buf], start + a)
        finally:
            os.close(fd)
        if got != b - a:
            raise CheckpointError(f"'{path}' is truncated: tensor '{name}' needs bytes {a}..{b} of its data section")
        t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        return t.reshape(entry["shape"])


def materialize(module: nn.Module, prefix: str, source: WeightSource, device: torch.device, dtype: torch.dtype,
                 config: Any, skip: str | None = None) -> None:
    """Allocate ``module``'s parameters on ``device`` and fill them from ``source`` (names under
    ``prefix``); buffers the files do not hold (rotary frequencies) are rebuilt from the config.
    Submodules under ``skip`` (the decoder blocks) stay on meta."""
    for name, sub in module.named_modules():
        full = f"{prefix}{name}" if name else prefix.rstrip(".")
        if skip is not None and (full == skip or full.startswith(skip + ".")):
            continue
        own_p = dict(sub.named_parameters(recurse=False))
        own_b = dict(sub.named_buffers(recurse=False))
        if not own_p and not own_b:
            continue
        rebuilt = None
        for pname, p in own_p.items():
            key = f"{full}.{pname}" if full else pname
            if p.device.type != "meta":
                continue
            if key in source.where:
                t = source.get(key).to(device=device, dtype=dtype if p.is_floating_point() else p.dtype)
            else:
                continue  # tied weights: set after all loads
            setattr(sub, pname, nn.Parameter(t, requires_grad=False))
        for bname, b in own_b.items():
            key = f"{full}.{bname}" if full else bname
            if key in source.where:
                t = source.get(key).to(device=device)
            else:
                if rebuilt is None:
                    try:
                        rebuilt = type(sub)(config=config)
                    except Exception:
                        raise CheckpointError(f"buffer '{key}' is neither in the checkpoint nor rebuildable from "
                                              "the config; layer streaming supports gpt_neox and llama-style models"
                                              ) from None
                t = dict(rebuilt.named_buffers(recurse=False))[bname].to(device)
            sub.register_buffer(bname, t, persistent=bname not in getattr(sub, "_non_persistent_buffers_set", set()))


def skeleton(folder: Path, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    """The model built on the meta device from the folder's config (its own code only when trusted)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    trust = bool(trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust)
    except ValueError as e:
        if remote_code_refused(e):
            raise remote_code_error(folder) from None
        raise
    return model.eval()
