"""Tokenizers saved in Hugging Face format, so ``AutoTokenizer.from_pretrained(checkpoint)`` works offline.

``byte``: the 256 byte-level symbols plus one end-of-text token, no merges.
``bpe``:  a byte-level BPE trained on the training documents with ``tokenizers`` (deterministic).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..errors import DataError
from ..models import quiet_transformers, remote_code_error, remote_code_refused

quiet_transformers()

EOS = "<|endoftext|>"


def _train(docs: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def build_tokenizer(kind: str, docs: list[str], vocab_size: int = 2048, max_length: int = 2048,
                    trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """Build a tokenizer of ``kind`` ("bpe", "byte") from ``docs``, or load one from a folder path (its own
    Python code runs only with ``trust_remote_code``)."""
    if kind == "byte":
        tok = _train([], 257)
    elif kind == "bpe":
        tok = _train(docs, vocab_size)
    else:
        return load_tokenizer(kind, trust_remote_code)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None,
                                   model_max_length=max_length)
    return fast


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """The tokenizer saved in a folder, offline. The user's ``trust_remote_code`` is always passed on:
    without it transformers would ask "[y/N]" on stdin for a folder with ``auto_map``."""
    from transformers import AutoTokenizer
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"tokenizer folder not found: '{p}'; use 'bpe', 'byte' or a folder with tokenizer.json")
    known = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")
    if not any((p / f).is_file() for f in known):
        raise DataError(f"no tokenizer in '{p}' (expected tokenizer.json or tokenizer_config.json); "
                        "save the tokenizer next to the model with save_pretrained")
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True, trust_remote_code=bool(trust_remote_code))
    except (OSError, ValueError) as e:
        if remote_code_refused(e):
            raise remote_code_error(p) from None
        raise DataError(f"cannot load a tokenizer from '{p}': {str(e).splitlines()[0]}") from None


def encode_documents(tokenizer, docs: list[str]) -> torch.Tensor:
    """Concatenate documents into one int64 stream, each followed by the end-of-text token."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer has no end-of-text token; set eos_token in its tokenizer_config.json")
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    flat: list[int] = []
    for seq in ids:
        flat.extend(seq)
        flat.append(eos)
    return torch.tensor(flat, dtype=torch.int64)


def file_fingerprint(paths: list[Path], chunk: int = 4 << 20) -> str:
    """sha1 over size + first and last ``chunk`` bytes of each file: cheap, and tells retrained weights apart."""
    h = hashlib.sha1()
    for p in sorted(paths):
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with p.open("rb") as f:
            h.update(f.read(chunk))
            if size > 2 * chunk:
                f.seek(size - chunk)
                h.update(f.read(chunk))
    return h.hexdigest()[:16]


def tokenizer_fingerprint(folder: str | Path) -> str:
    files = [p for p in Path(folder).glob("tokenizer*.json")] + list(Path(folder).glob("*.model"))
    files += list(Path(folder).glob("vocab.json")) + list(Path(folder).glob("merges.txt"))
    return file_fingerprint(files) if files else "none"
