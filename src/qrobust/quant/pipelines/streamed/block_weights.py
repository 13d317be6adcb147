"""Reading a checkpoint for layer streaming: the model skeleton on ``meta`` (no memory), its tensors from
the safetensors files one module at a time, by the names the model gives them, and the streamed model
(``StreamedModel``: everything but the decoder blocks loaded, one block loaded at a time)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ....checks import ST_DTYPES, check_seq_len, check_tensors, check_token_ids, file_index, safetensors_header
from ....errors import CheckpointError
from ....models import remote_code_error, remote_code_refused, resolve_device, resolve_dtype, weight_safetensors
from ..blocks import decoder_layers, first_block_inputs
from .hidden_states import HiddenStates, Tier


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
            self.where = {key: (f, start, entry) for f in files for start, head in [safetensors_header(f)]
                          for key, entry in head.items()}

    def get(self, name: str) -> torch.Tensor:
        import os
        if name not in self.where:
            raise CheckpointError(f"tensor '{name}' is not in the checkpoint's safetensors files")
        path, start, entry = self.where[name]
        dtype = ST_DTYPES.get(entry["dtype"])
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


@dataclass
class StreamedModel:
    """The model being streamed: its skeleton (embeddings, final norm and head loaded; blocks on meta),
    where its tensors are, its decoder blocks and their names."""
    folder: Path
    model: nn.Module
    source: WeightSource
    dev: torch.device
    dt: torch.dtype
    layers: nn.ModuleList | None = None
    prefixes: list[str] = field(default_factory=list)
    read_seconds: float = 0.0  # time spent reading blocks' weights from the files

    def load_block(self, i: int) -> nn.Module:
        """Block ``i`` with its FP weights from the files, replacing whatever it holds."""
        t0 = time.perf_counter()
        block, prefix = self.layers[i], self.prefixes[i]
        if any(p.device.type != "meta" for p in block.parameters()):
            block.to_empty(device="meta")
        materialize(block, prefix + ".", self.source, self.dev, self.dt, self.model.config)
        missing = [n for n, p in block.named_parameters() if p.device.type == "meta"]
        if missing:
            raise CheckpointError(f"'{self.folder}': parameter '{prefix}.{missing[0]}' is missing from the safetensors "
                                  "files")
        self.read_seconds += time.perf_counter() - t0
        return block

    def stream_of(self, tokens: torch.Tensor, size: int, tier: Tier, states_dir: Path | None) -> HiddenStates:
        """The first block's inputs, batch by batch, into a stream of the chosen tier."""
        out = HiddenStates(tier, self.dev, states_dir)
        for b in torch.split(tokens, size):
            ((args, kwargs),) = first_block_inputs(self.model, self.layers[0], [b.to(self.dev)])
            out.append(args, kwargs)
        return out


def open_checkpoint(checkpoint: str | Path, device: str, dtype: str, trust_remote_code: bool) -> StreamedModel:
    """The model on meta and its safetensors index, checked as an in-memory load checks them."""
    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"'{folder}' is not a model folder: expected config.json and *.safetensors")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    model = skeleton(folder, dt, trust_remote_code)
    source = WeightSource(folder, model)
    check_tensors(folder, model, source.where)  # the same check as an in-memory load, before any work
    return StreamedModel(folder, model, source, dev, dt)


def check_tokens(m: StreamedModel, blocks: torch.Tensor, calibration: dict[Any, torch.Tensor],
                 calibrated: Iterable[Any]) -> None:
    rows, folder = m.model.get_input_embeddings().weight.shape[0], str(m.folder)
    check_seq_len(m.model.config, blocks.shape[1], folder)
    check_token_ids(blocks, rows, folder)
    for spec in calibrated:
        check_seq_len(m.model.config, calibration[spec].shape[1], folder, "calibration sample length",
                      "--calib-seq-len (calibration.seq_len)")
        check_token_ids(calibration[spec], rows, folder)


def load_outside_blocks(m: StreamedModel) -> None:
    """Find the decoder blocks (left on meta) and load everything else: embeddings, final norm, head."""
    model, folder = m.model, m.folder
    m.layers = layers = decoder_layers(model)
    if layers is None:
        raise CheckpointError(f"'{folder}': no decoder block list found; layer streaming needs a decoder-only model")
    layers_name = {id(mod): n for n, mod in model.named_modules()}[id(layers)]
    materialize(model, "", m.source, m.dev, m.dt, model.config, skip=layers_name)
    if getattr(model.config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        out_emb = model.get_output_embeddings()
        if out_emb.weight.device.type == "meta":
            out_emb.weight = model.get_input_embeddings().weight
    leftover = [n for n, p in model.named_parameters() if p.device.type == "meta" and not n.startswith(layers_name)]
    if leftover:
        raise CheckpointError(f"'{folder}': parameter '{leftover[0]}' is missing from the safetensors files")
    m.prefixes = [f"{layers_name}.{i}" for i in range(len(layers))]
