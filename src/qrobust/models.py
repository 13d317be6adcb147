"""Architecture presets (GPT-NeoX/Pythia and Llama) and safe load/save of Hugging Face checkpoints.

Loading is safe by default: safetensors only; pickle weights (``*.bin``/``*.pt``) are refused unless the
caller opts in, and then transformers reads them with ``torch.load(weights_only=True)``. Remote code
runs only when ``trust_remote_code`` is asked for.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .io.atomic import atomic_dir
from .io.files import OPTIMIZER_FILE, STATE_FILE, STATE_TENSOR_FILES


def quiet_transformers() -> None:
    """Silence transformers' per-file progress bars and length warnings; qrobust shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


quiet_transformers()


def forbid_remote_code_prompt() -> None:
    """Make transformers' "[y/N]" remote-code question impossible in this process: qrobust passes the
    user's choice to every loader, and a loader that ever forgot (``trust_remote_code=None``) now refuses
    instead of reading stdin, where a piped "y" would run the folder's Python code."""
    from transformers import dynamic_module_utils

    dynamic_module_utils.TIME_OUT_REMOTE_CODE = 0


forbid_remote_code_prompt()

REMOTE_CODE_HINT = "pass --trust-remote-code (trust_remote_code: true in a sweep config) only if you trust it"


def remote_code_refused(e: BaseException) -> bool:
    """True when transformers refused to import a folder's own Python code (``auto_map``) because
    ``trust_remote_code`` was off."""
    return isinstance(e, ValueError) and "trust_remote_code" in str(e)


def remote_code_error(folder: str | Path) -> CheckpointError:
    """The one line for a folder that needs custom code while the user did not allow it."""
    return CheckpointError(f"'{folder}' needs its own Python code to load (auto_map in its config.json or "
                           f"tokenizer_config.json), which is not run by default; {REMOTE_CODE_HINT}")


@dataclass(frozen=True)
class SizePreset:
    hidden: int
    layers: int
    heads: int
    intermediate: int


# Pythia sizes follow the Pythia suite's configs; "tiny"/"small" are CPU demo sizes.
PRESETS: dict[str, SizePreset] = {
    "micro": SizePreset(32, 2, 2, 128),
    "tiny": SizePreset(128, 4, 4, 512),
    "small": SizePreset(256, 4, 4, 1024),
    "pythia-14m": SizePreset(128, 6, 4, 512),
    "pythia-31m": SizePreset(256, 6, 8, 1024),
    "pythia-70m": SizePreset(512, 6, 8, 2048),
    "pythia-160m": SizePreset(768, 12, 12, 3072),
}


def build_model(arch: str, preset: str, vocab_size: int, max_positions: int, seed: int = 0,
                overrides: dict[str, Any] | None = None) -> nn.Module:
    """A freshly initialised causal LM (fp32, dropout off) from a size preset."""
    cls, config = model_config(arch, preset, vocab_size, max_positions, overrides)
    torch.manual_seed(seed)
    model = cls(config)
    model.eval()
    return model


def model_config(arch: str, preset: str, vocab_size: int, max_positions: int,
                 overrides: dict[str, Any] | None = None) -> tuple[type, Any]:
    """(model class, transformers config) of a size preset + overrides: the sizes, without building weights."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset '{preset}'; known: {', '.join(PRESETS)}")
    s = PRESETS[preset]
    if arch == "gpt_neox":
        kw: dict[str, Any] = dict(
            vocab_size=vocab_size, hidden_size=s.hidden, num_hidden_layers=s.layers,
            num_attention_heads=s.heads, intermediate_size=s.intermediate, max_position_embeddings=max_positions,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
            attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=0, eos_token_id=0,
        )
        cls, cfg_cls = GPTNeoXForCausalLM, GPTNeoXConfig
    elif arch == "llama":
        kw = dict(
            vocab_size=vocab_size, hidden_size=s.hidden, num_hidden_layers=s.layers,
            num_attention_heads=s.heads, num_key_value_heads=s.heads, intermediate_size=s.intermediate,
            max_position_embeddings=max_positions, tie_word_embeddings=False, attention_dropout=0.0,
            bos_token_id=0, eos_token_id=0,
        )
        cls, cfg_cls = LlamaForCausalLM, LlamaConfig
    else:
        raise ConfigError(f"unknown architecture '{arch}'; use 'gpt_neox' or 'llama'")
    kw.update(overrides or {})
    try:
        config = cfg_cls(**kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid model overrides: {e}") from None
    return cls, config


# training state kept in a qrobust checkpoint folder beside the weights: never model tensors


def weight_safetensors(folder: Path) -> list[Path]:
    """The model's own safetensors files in a folder (training-state files excluded)."""
    return sorted(f for f in Path(folder).glob("*.safetensors") if f.name not in STATE_TENSOR_FILES)


def _weight_files(p: Path) -> tuple[list[Path], list[Path]]:
    safe = weight_safetensors(p)
    pickle = sorted(list(p.glob("*.bin")) + list(p.glob("*.pt")) + list(p.glob("*.pth")))
    return safe, [f for f in pickle if f.name not in ("training_args.bin",)]


def check_loaded_tensors(folder: Path, model: nn.Module, info: dict[str, Any], safe: list[Path]) -> None:
    """Refuse what transformers would fill in or cast silently: missing, unexpected or re-shaped tensors
    (``info``, its loading report) and, from the safetensors headers, weights stored with the wrong
    dtype kind (``checks.check_tensors``)."""
    from .checks import check_tensors, file_index
    index = None
    if safe and getattr(model, "hf_quantizer", None) is None:  # pre-quantized files: transformers' report alone
        try:
            index = file_index(safe, model)
        except CheckpointError:  # tensors converted on load (not only renamed): transformers' report alone
            index = None
    check_tensors(folder, model, index, info)


def check_finite(model: nn.Module, where: str) -> None:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"checkpoint '{where}' has NaN/Inf values in '{name}'; it cannot be evaluated")


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA when there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:i``; one clear line when the
    asked device is not there."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        idx = spec.partition(":")[2]
        if idx and not idx.isdigit():
            raise CheckpointError(f"device '{spec}' is not valid; use auto, cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise CheckpointError(f"device '{spec}' asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                                  "use --device cpu (or auto)")
        if idx and int(idx) >= torch.cuda.device_count():
            raise CheckpointError(f"device '{spec}' asked for, but only {torch.cuda.device_count()} CUDA GPU(s) "
                                  "are visible")
        return torch.device(spec)
    raise CheckpointError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N")


def resolve_dtype(spec: str | torch.dtype | None = "float32") -> torch.dtype:
    """The model dtype by name (float32, bfloat16, float16 and their short forms). Quantizer math
    (Hessians, GPTQ updates, grids) stays fp32 whatever this is."""
    if isinstance(spec, torch.dtype):
        return spec
    key = (spec or "float32").strip().lower()
    if key not in DTYPES:
        raise CheckpointError(f"unknown dtype '{spec}'; use float32, bfloat16 or float16")
    return DTYPES[key]


def read_model_config(folder: str | Path, required: bool = True) -> dict[str, Any]:
    """A model folder's ``config.json`` as a dict, without building anything (``{}`` when absent and
    not ``required``)."""
    f = Path(folder) / "config.json"
    if not f.is_file():
        if required:
            raise CheckpointError(f"'{folder}' is not a model folder (no config.json)")
        return {}
    try:
        return json.loads(f.read_text())
    except ValueError:
        raise CheckpointError(f"'{f}' is not valid JSON") from None


def load_checkpoint(path: str | Path, allow_pickle: bool = False, trust_remote_code: bool = False,
                    dtype: torch.dtype | str = torch.float32, revision: str | None = None,
                    device: str | torch.device | None = None) -> nn.Module:
    """Load a causal LM from a local ``save_pretrained`` folder, safely; on ``device`` (default CPU) in
    ``dtype``."""
    dtype = resolve_dtype(dtype)
    target = resolve_device(device) if device is not None else None
    from transformers import AutoModelForCausalLM

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: '{p}'")
    if not p.is_dir() or not (p / "config.json").is_file():
        raise CheckpointError(f"'{p}' is not a model folder: expected config.json and *.safetensors "
                              "(a Hugging Face save_pretrained folder)")
    safe, pickled = _weight_files(p)
    if not safe and not pickled:
        raise CheckpointError(f"'{p}' has config.json but no weight files (*.safetensors)")
    if not safe and not allow_pickle:
        raise CheckpointError(f"'{p}' holds pickle weights ({pickled[0].name}), which can run code when loaded; "
                              "re-save as safetensors or pass --allow-pickle to load them with weights_only=True")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(p), dtype=dtype, local_files_only=True, use_safetensors=bool(safe),
            trust_remote_code=bool(trust_remote_code), revision=revision,
            output_loading_info=True, ignore_mismatched_sizes=True,  # reported, then refused below
        )
    except ValueError as e:
        if remote_code_refused(e):  # the hint is on a later line of transformers' message
            raise remote_code_error(p) from None
        raise CheckpointError(f"cannot load '{p}': {str(e).splitlines()[0]}") from None
    except Exception as e:  # corrupt/truncated safetensors, missing keys, bad config: all one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot load '{p}': {first}") from None
    model.eval()
    check_loaded_tensors(p, model, info, safe)
    check_finite(model, str(p))
    if target is not None and target.type != "cpu":
        model.to(target)
    return model


def check_vocab(model: nn.Module | int | dict, tokenizer, where: str) -> None:
    """The tokenizer must belong to the model (``checks.check_tokenizer``): vocabulary size and special
    ids. ``model``: the model, its ``config.json`` as a dict when it is not loaded whole, or its number of
    embedding rows."""
    from .checks import check_tokenizer
    if isinstance(model, int):
        rows, config = model, None
    elif isinstance(model, dict):
        v = model.get("vocab_size")
        rows, config = (v if isinstance(v, int) and not isinstance(v, bool) else None), model
    else:
        rows, config = model.get_input_embeddings().weight.shape[0], getattr(model, "config", None)
    check_tokenizer(rows, config, tokenizer, str(where))


def save_checkpoint(model: nn.Module, tokenizer, path: str | Path, extra: dict[str, Any] | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None, files: dict[str, str] | None = None,
                    tensor_files: dict[str, dict[str, torch.Tensor]] | None = None, what: str = "checkpoint") -> Path:
    """``save_pretrained`` (safetensors) + tokenizer + optional state/optimizer/text/tensor side files, atomically."""
    from safetensors.torch import save_file

    final = Path(path)
    with atomic_dir(final, what) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if extra is not None:
            (tmp / STATE_FILE).write_text(json.dumps(extra, indent=1, sort_keys=True))
        if extra_tensors:
            save_file({k: v.contiguous() for k, v in extra_tensors.items()}, str(tmp / OPTIMIZER_FILE))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        for name, tensors in (tensor_files or {}).items():
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / name))
    return final
