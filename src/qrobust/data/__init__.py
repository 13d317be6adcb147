"""Corpora, tokenizers, document splits, block packing and calibration sampling."""
from .corpus import CorpusSpec, load_documents, parse_corpus_spec, register_source
from .blocks import calibration_blocks, pack_blocks, split_documents, take_blocks
from .tokenizer import build_tokenizer, encode_documents, load_tokenizer

__all__ = [
    "CorpusSpec", "load_documents", "parse_corpus_spec", "register_source",
    "calibration_blocks", "pack_blocks", "split_documents", "take_blocks",
    "build_tokenizer", "encode_documents", "load_tokenizer",
]
