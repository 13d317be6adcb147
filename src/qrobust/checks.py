"""Checks that what is evaluated is what the checkpoint holds, so a number is never silently wrong.

* every tensor the model needs is in the weight files, nothing else is, and each has the model's shape and
  a dtype of the right kind (a float weight stored as integers is refused, not cast): one check of the
  safetensors headers against the model's state dict, used by the in-memory load (together with what
  transformers reports) and by the layer-streamed path;
* the evaluated and calibration sequences fit the model's positions;
* the tokenizer belongs to the model (``models.check_vocab``), and every token id indexes its embedding;
* a loss is a finite number (``evaluate.evaluate_loss``).
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError

# safetensors dtype names -> torch dtypes (those qrobust reads itself, in the layer-streamed path)
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}


def safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, header) of a safetensors file: an 8-byte little-endian length,
    then that many bytes of JSON naming each tensor's dtype, shape and byte range."""
    with Path(path).open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"'{path}' is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        try:
            head = json.loads(f.read(n))
        except ValueError:
            raise CheckpointError(f"'{path}' is not a safetensors file (bad header)") from None
    if not isinstance(head, dict):
        raise CheckpointError(f"'{path}' is not a safetensors file (bad header)")
    head.pop("__metadata__", None)
    return 8 + n, head


def renamings(model: nn.Module) -> list[tuple[str, str]]:
    """(regex, replacement) pairs transformers applies to checkpoint keys when it loads this model (e.g.
    GPT-NeoX's ``embed_out.`` → ``lm_head.``); anything beyond plain renaming is refused."""
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping
    except ImportError:  # older transformers: keys are the module names
        return []
    pairs = []
    for conv in get_model_conversion_mapping(model) or []:
        if not isinstance(conv, WeightRenaming):
            raise CheckpointError(f"{type(model).__name__} converts its checkpoint tensors on load "
                                  f"({type(conv).__name__}); layer streaming supports models whose tensors are "
                                  "only renamed")
        for src, tgt in zip(conv.source_patterns, conv.target_patterns * len(conv.source_patterns)):
            pairs.append((src, tgt))
    return pairs


def file_index(files: list[Path], model: nn.Module) -> dict[str, tuple[Path, int, dict[str, Any]]]:
    """Every tensor of the safetensors ``files`` by the model's name for it -> (file, start of its data
    section, header entry): transformers' renamings applied, and the base-model prefix (``model.``,
    ``transformer.``) added or dropped as transformers does for files saved from the bare base model."""
    renames = renamings(model)
    expected = set(model.state_dict().keys())
    base = getattr(model, "base_model_prefix", "") or ""
    out: dict[str, tuple[Path, int, dict[str, Any]]] = {}
    for f in files:
        start, head = safetensors_header(f)
        for key, entry in head.items():
            name = key
            for src, tgt in renames:
                name = re.sub(src, tgt, name)
            if base and name not in expected:
                if name.startswith(base + ".") and name[len(base) + 1:] in expected:
                    name = name[len(base) + 1:]
                elif f"{base}.{name}" in expected:
                    name = f"{base}.{name}"
            out[name] = (f, start, entry)
    return out


def _is_float(st_dtype: str) -> bool:
    """safetensors dtypes F64/F32/F16/BF16/F8_*/F4...: floating point; I*/U*/BOOL are not."""
    return st_dtype.startswith("F") or st_dtype.startswith("BF")


def _patterns(model: nn.Module, attr: str) -> re.Pattern | None:
    pats = set(getattr(model, attr, None) or ())
    if attr == "_keys_to_ignore_on_load_unexpected":  # what transformers also drops from its unexpected keys
        bufs = [n for n, _ in model.named_buffers()]
        if any(n.endswith("rotary_emb.inv_freq") for n in bufs):
            pats.add(r"rotary_emb\.inv_freq")
        if any(n.endswith("position_ids") for n in bufs):
            pats.add(r"(^|\.)position_ids$")
    return re.compile("|".join(f"({p})" for p in pats)) if pats else None


def tensor_problems(model: nn.Module, index: dict[str, tuple[Path, int, dict[str, Any]]]) -> list[str]:
    """What is wrong between the files' tensors (``file_index``) and the model's state dict, as short
    phrases (empty: nothing). Tied weights (a head sharing the embedding) and non-persistent buffers
    (rotary frequencies) are legitimately absent."""
    state = model.state_dict(keep_vars=True)
    tied = set((getattr(model, "all_tied_weights_keys", None) or {}).keys())
    shared: dict[int, list[str]] = {}  # names of one tensor object (tied by identity, e.g. custom code)
    for n, t in state.items():
        shared.setdefault(id(t), []).append(n)
    skip_missing = _patterns(model, "_keys_to_ignore_on_load_missing")
    skip_unexpected = _patterns(model, "_keys_to_ignore_on_load_unexpected")
    missing = [n for n in state if n not in index and n not in tied
               and not any(o in index for o in shared[id(state[n])])
               and not (skip_missing and skip_missing.search(n))]
    non_persistent = {n for n, _ in model.named_buffers()} - set(state)
    unexpected = [n for n in index if n not in state and n not in non_persistent
                  and not (skip_unexpected and skip_unexpected.search(n))]
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {_names(unexpected)}")
    for n, (_, _, entry) in index.items():
        if n not in state:
            continue
        want = state[n]
        stored = str(entry.get("dtype", "?"))
        if _is_float(stored) != want.is_floating_point():
            problems.append(f"'{n}' stored as {stored} where the model needs "
                            f"{'floating point' if want.is_floating_point() else str(want.dtype)}")
        if list(entry.get("shape", [])) != list(want.shape):
            problems.append(f"'{n}' has shape {list(entry.get('shape', []))} in the file, the model needs "
                            f"{list(want.shape)}")
    return problems


def _names(names: list[str] | set[str], limit: int = 3) -> str:
    s = sorted(names)
    more = f" and {len(s) - limit} more" if len(s) > limit else ""
    return ", ".join(f"'{n}'" for n in s[:limit]) + more


def check_tensors(folder: str | Path, model: nn.Module, index: dict[str, tuple[Path, int, dict[str, Any]]] | None,
                  loading_info: dict[str, Any] | None = None) -> None:
    """Refuse a checkpoint whose files do not hold exactly the model's tensors: from the safetensors index
    (when there is one) and what transformers reported when it loaded them (``loading_info``)."""
    problems = tensor_problems(model, index) if index is not None else []
    info = loading_info or {}
    if not any(p.startswith("missing") for p in problems) and info.get("missing_keys"):
        problems.append(f"missing tensor(s) {_names(info['missing_keys'])}")
    if not any(p.startswith("unexpected") for p in problems) and info.get("unexpected_keys"):
        problems.append(f"unexpected tensor(s) {_names(info['unexpected_keys'])}")
    for m in info.get("mismatched_keys") or ():
        name = m[0] if isinstance(m, (tuple, list)) else m
        if not any(f"'{name}'" in p for p in problems):
            shapes = f" (file {list(m[1])}, model {list(m[2])})" if isinstance(m, (tuple, list)) and len(m) >= 3 else ""
            problems.append(f"'{name}' has the wrong shape{shapes}")
    for e in info.get("error_msgs") or ():
        problems.append(str(e).splitlines()[0] if str(e) else "load error")
    if problems:
        more = f" (+{len(problems) - 4} more problems)" if len(problems) > 4 else ""
        raise CheckpointError(f"checkpoint '{folder}' does not match its model ({type(model).__name__}): "
                              f"{'; '.join(problems[:4])}{more}; it cannot be evaluated (re-save it with "
                              "save_pretrained from the model it belongs to)")


# ----------------------------------------------------------------------------------------------------------
# positions and token ids
# ----------------------------------------------------------------------------------------------------------
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def max_positions(config: Any) -> tuple[int, str] | None:
    """(positions the model was built for, the config key saying so), or None when the config says nothing.
    ``config``: a transformers config or the dict of a ``config.json``."""
    if config is None:
        return None
    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    for key in POSITION_KEYS:
        v = get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v, key
    return None


def check_seq_len(config: Any, seq_len: int, where: str, what: str = "sequence length",
                  option: str = "--seq-len") -> None:
    """Refuse sequences longer than the model's positions: beyond them a learned position table is
    indexed out of range and rotary models extrapolate, so the loss would not be the model's."""
    got = max_positions(config)
    if got is not None and seq_len > got[0]:
        raise ConfigError(f"{what} {seq_len} is longer than the model's context ({got[1]} = {got[0]}) at "
                          f"'{where}'; use {option} {got[0]} or less")


def check_token_ids(blocks: torch.Tensor, rows: int, where: str) -> None:
    """Every token id must index the embedding (an id beyond it is an IndexError on CPU and a device
    assert on a GPU)."""
    if blocks.numel() and (int(blocks.max()) >= rows or int(blocks.min()) < 0):
        raise CheckpointError(f"token id {int(blocks.max())} is outside the embedding of '{where}' ({rows} rows); "
                              "the tokens were made with another model's tokenizer")


# ----------------------------------------------------------------------------------------------------------
# tokenizer and model
# ----------------------------------------------------------------------------------------------------------
def padded_rows(n_tokens: int) -> int:
    """The most embedding rows a model of a tokenizer with ``n_tokens`` tokens may have: models pad their
    embedding for fast matrix products (Pythia: 50277 tokens, 50304 rows; Phi-2: 50295, 51200; DeepSeek:
    100015, 102400), so allow the next multiple of 128 or 5 % more rows, whichever is larger. A tokenizer
    of another model (a 32000-token Llama tokenizer on a 50304-row Pythia) is far beyond that."""
    return max(-(-n_tokens // 128) * 128, n_tokens + n_tokens // 20)


def _ids(v: Any) -> set[int]:
    if isinstance(v, bool):
        return set()
    if isinstance(v, int):
        return {v}
    if isinstance(v, (list, tuple)):
        return {x for x in v if isinstance(x, int) and not isinstance(x, bool)}
    return set()


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(t, "special", False):
            ids.add(int(i))
    return ids


def check_tokenizer(rows: int | None, config: Any, tokenizer, where: str) -> None:
    """The tokenizer must belong to the model: every id it emits indexes the embedding (``rows``), the
    embedding is no larger than padding explains, and the model's end/begin-of-text ids (config.json) are
    the tokenizer's, or at least special tokens of it (a model may name another of its special tokens as
    its eos). ``config``: a transformers config or a ``config.json`` dict (None: unknown)."""
    n_tok = len(tokenizer)
    if rows is not None:
        if n_tok > rows:
            raise CheckpointError(f"tokenizer/model vocab mismatch at '{where}': tokenizer has {n_tok} tokens, "
                                  f"model embeds {rows}; use the tokenizer saved with the checkpoint")
        if rows > padded_rows(n_tok):
            raise CheckpointError(f"tokenizer/model vocab mismatch at '{where}': tokenizer has {n_tok} tokens, "
                                  f"model embeds {rows} (more than padding to {padded_rows(n_tok)} explains); "
                                  "use the tokenizer saved with the checkpoint")
    if config is None:
        return
    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    special = _special_ids(tokenizer)
    for kind in ("eos", "bos"):
        model_ids = _ids(get(f"{kind}_token_id"))
        tok_id = getattr(tokenizer, f"{kind}_token_id", None)
        if not model_ids or not isinstance(tok_id, int) or tok_id in model_ids:
            continue
        if model_ids & special:  # e.g. an instruct model ending on <|eot_id|>, its tokenizer on <|end_of_text|>
            continue
        i = min(model_ids)
        seen = repr(tokenizer.convert_ids_to_tokens(i)) if 0 <= i < n_tok else "no token"
        raise CheckpointError(f"tokenizer/model mismatch at '{where}': config.json has {kind}_token_id {i}, the "
                              f"tokenizer's {kind} token is id {tok_id} and id {i} is {seen}; use the tokenizer "
                              "saved with the checkpoint")
