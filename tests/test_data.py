"""Corpora, document splits, block packing, calibration sampling, tokenizers and the prepared-data cache.

Everything is offline and small: tiny text / jsonl / Hugging Face datasets written into ``tmp_path``,
a capped slice of the built-in corpus, and byte / 300-token BPE tokenizers.
"""
from __future__ import annotations

import ast
import collections
import json
import os
import sysconfig
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from qrobust.config import DataConfig  # noqa: E402
from qrobust.data import (  # noqa: E402
    CorpusSpec,
    build_tokenizer,
    calibration_blocks,
    encode_documents,
    load_documents,
    pack_blocks,
    parse_corpus_spec,
    split_documents,
)
from qrobust.data import prepare as prepare_mod  # noqa: E402
from qrobust.data.prepare import prepare_data  # noqa: E402
from qrobust.errors import DataError, QrobustError  # noqa: E402


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------
@pytest.fixture()
def hf(tmp_path, monkeypatch):
    """``datasets`` with its cache redirected into tmp_path and progress bars off."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    datasets.disable_progress_bars()
    return datasets


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _segments(stream: torch.Tensor, eos: int) -> list[list[int]]:
    """Split a token stream at eos tokens; the stream must end with eos."""
    ids = stream.tolist()
    assert ids and ids[-1] == eos, "stream must end with the end-of-text token"
    out, cur = [], []
    for t in ids:
        if t == eos:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    return out


# ------------------------------------------------------------------------------------------------------
# builtin corpus
# ------------------------------------------------------------------------------------------------------
BUILTIN_CAP = 50_000


def test_builtin_nonempty_deterministic_and_capped():
    a = load_documents("builtin", max_chars=BUILTIN_CAP)
    b = load_documents("builtin", max_chars=BUILTIN_CAP)
    assert a, "builtin corpus is empty"
    assert a == b
    assert all(isinstance(d, str) and d.strip() for d in a)
    total = sum(len(d) for d in a)
    assert total <= BUILTIN_CAP
    # the standard library holds far more than 50k characters, so the cap is filled exactly
    assert total == BUILTIN_CAP


def test_builtin_small_cap_truncates_first_document():
    from pydoc_data.topics import topics
    first_topic = topics[sorted(topics)[0]].strip()
    cap = 100
    assert len(first_topic) > cap
    docs = load_documents("builtin", max_chars=cap)
    assert docs == [first_topic[:cap]]


def test_builtin_holds_prose_and_python_source():
    from pydoc_data.topics import topics
    docs = load_documents("builtin", max_chars=BUILTIN_CAP)
    topic_texts = {t.strip() for t in topics.values()}
    # prose: the first document is the alphabetically first pydoc topic, complete
    assert docs[0] == topics[sorted(topics)[0]].strip()
    assert sum(d in topic_texts for d in docs) >= 2
    # code: the first stdlib source file (sorted by path) is present verbatim and parses as Python
    future = (Path(sysconfig.get_paths()["stdlib"]) / "__future__.py").read_text(encoding="utf-8").strip()
    assert future in docs
    sources = [d for d in docs if d not in topic_texts]
    assert sources
    ast.parse(future)
    assert any("def " in d or "import " in d for d in sources)


# ------------------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------------------
def test_text_folder_one_document_per_file_sorted_by_path(tmp_path):
    root = tmp_path / "corpus"
    _write(root / "b.txt", "bravo text\n")
    _write(root / "a.txt", "alpha text")
    _write(root / "sub" / "c.md", "charlie\n\nstill charlie")  # a file is one document, blank lines kept
    _write(root / "blank.txt", "   \n\n")  # blank -> dropped
    _write(root / ".hidden", "never read")
    docs = load_documents(f"text:{root}")
    # sorted by path: a.txt < b.txt < blank.txt < sub/c.md
    assert docs == ["alpha text", "bravo text\n", "charlie\n\nstill charlie"]
    # a bare folder path is sniffed as text
    assert load_documents(str(root)) == docs


def test_text_file_blank_line_paragraphs(tmp_path):
    f = _write(tmp_path / "book.txt", "p1 line1\np1 line2\n\np2\n\n\n\np3\r\n\r\np4 end")
    expected = ["p1 line1\np1 line2", "p2", "p3", "p4 end"]
    assert load_documents(f"text:{f}") == expected
    assert load_documents(str(f)) == expected


def test_max_chars_caps_a_text_corpus(tmp_path):
    f = _write(tmp_path / "t.txt", "aaaa\n\nbbbb\n\ncccc")
    assert load_documents(f"text:{f}", max_chars=6) == ["aaaa", "bb"]
    assert load_documents(f"text:{f}", max_chars=4) == ["aaaa"]


@pytest.mark.parametrize("marker", ["dataset_info.json", "state.json", "dataset_dict.json"])
def test_sniff_hf_disk_folder(tmp_path, marker):
    d = tmp_path / "ds"
    _write(d / marker, "{}")
    spec = parse_corpus_spec(str(d))
    assert spec.kind == "hf-disk" and spec.target == str(d)


def test_sniff_by_suffix(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert parse_corpus_spec(str(tmp_path / "x.jsonl")).kind == "jsonl"
    assert parse_corpus_spec(str(tmp_path / "x.parquet")).kind == "parquet"
    assert parse_corpus_spec(str(tmp_path / "x.txt")).kind == "text"
    assert parse_corpus_spec(str(tmp_path / "noext")).kind == "text"
    assert parse_corpus_spec(str(plain)).kind == "text"
    assert parse_corpus_spec("builtin").kind == "builtin"
    s = parse_corpus_spec("hf:wikitext:wikitext-2-raw-v1:validation")
    assert (s.kind, s.target, s.config, s.split) == ("hf", "wikitext", "wikitext-2-raw-v1", "validation")


# ------------------------------------------------------------------------------------------------------
# jsonl
# ------------------------------------------------------------------------------------------------------
def test_jsonl_default_and_custom_field(tmp_path):
    f = _write(tmp_path / "d.jsonl", "\n".join([
        json.dumps({"text": "first doc", "body": "B1"}),
        "",  # blank lines are skipped
        json.dumps({"text": "second doc", "body": "B2", "n": 3}),
    ]) + "\n")
    assert load_documents(f"jsonl:{f}") == ["first doc", "second doc"]
    assert load_documents(str(f)) == ["first doc", "second doc"]  # sniffed by suffix
    assert load_documents(f"jsonl:{f}", field="body") == ["B1", "B2"]


def test_jsonl_missing_field_names_line_and_field(tmp_path):
    f = _write(tmp_path / "d.jsonl", "\n".join([
        json.dumps({"body": "ok"}),
        "",
        json.dumps({"text": "no body here"}),
    ]) + "\n")
    with pytest.raises(DataError) as ei:
        load_documents(f"jsonl:{f}", field="body")
    msg = str(ei.value)
    assert ":3:" in msg  # the third physical line (blank lines count)
    assert "'body'" in msg
    assert "\n" not in msg


def test_jsonl_invalid_json_and_non_objects(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r":2:.*not valid JSON"):
        load_documents(f"jsonl:{bad}")
    lst = _write(tmp_path / "list.jsonl", '["text"]\n')
    with pytest.raises(DataError, match=r":1:"):
        load_documents(f"jsonl:{lst}")
    num = _write(tmp_path / "num.jsonl", '{"text": 5}\n')
    with pytest.raises(DataError, match=r":1:.*int"):
        load_documents(f"jsonl:{num}")


# ------------------------------------------------------------------------------------------------------
# Hugging Face: save_to_disk and parquet
# ------------------------------------------------------------------------------------------------------
def test_hf_disk_dataset(hf, tmp_path):
    texts = ["one fish", "two fish", "   ", "red fish"]
    ds = hf.Dataset.from_dict({"text": texts, "other": [1, 2, 3, 4]})
    path = tmp_path / "saved"
    ds.save_to_disk(str(path))
    expected = ["one fish", "two fish", "red fish"]  # blank rows dropped, order kept
    assert load_documents(f"hf-disk:{path}") == expected
    assert load_documents(str(path)) == expected  # sniffed
    assert load_documents(f"hf-disk:{path}", field="other") == ["1", "2", "3", "4"]
    with pytest.raises(DataError) as ei:
        load_documents(f"hf-disk:{path}", field="body")
    msg = str(ei.value)
    assert "'body'" in msg and "text" in msg and "other" in msg


def test_hf_disk_dataset_dict_splits(hf, tmp_path):
    dd = hf.DatasetDict({
        "train": hf.Dataset.from_dict({"text": ["t1", "t2"]}),
        "validation": hf.Dataset.from_dict({"text": ["v1"]}),
    })
    path = tmp_path / "dd"
    dd.save_to_disk(str(path))
    assert load_documents(f"hf-disk:{path}") == ["t1", "t2"]  # default split: train
    assert load_documents(str(path)) == ["t1", "t2"]
    assert load_documents(CorpusSpec("hf-disk", str(path), split="validation")) == ["v1"]
    with pytest.raises(DataError, match="test"):
        load_documents(CorpusSpec("hf-disk", str(path), split="test"))
    # no "train" split: the alphabetically first one
    dd2 = hf.DatasetDict({"zeta": hf.Dataset.from_dict({"text": ["z"]}),
                          "alpha": hf.Dataset.from_dict({"text": ["a"]})})
    dd2.save_to_disk(str(tmp_path / "dd2"))
    assert load_documents(f"hf-disk:{tmp_path / 'dd2'}") == ["a"]


def test_hf_disk_not_a_dataset_folder(hf, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        load_documents(f"hf-disk:{empty}")
    with pytest.raises(DataError, match="not found"):
        load_documents(f"hf-disk:{tmp_path / 'missing'}")


def test_parquet_file_and_folder(hf, tmp_path):
    ds = hf.Dataset.from_dict({"text": ["alpha", "beta", "gamma"], "label": [0, 1, 0]})
    f = tmp_path / "pq" / "part.parquet"
    f.parent.mkdir()
    ds.to_parquet(str(f))
    assert load_documents(f"parquet:{f}") == ["alpha", "beta", "gamma"]
    assert load_documents(str(f)) == ["alpha", "beta", "gamma"]  # sniffed
    assert load_documents(f"parquet:{f.parent}") == ["alpha", "beta", "gamma"]
    with pytest.raises(DataError) as ei:
        load_documents(f"parquet:{f}", field="content")
    msg = str(ei.value)
    assert "'content'" in msg and "text" in msg and "label" in msg
    with pytest.raises(DataError, match="no parquet files"):
        load_documents(f"parquet:{tmp_path / 'nothing.parquet'}")


# ------------------------------------------------------------------------------------------------------
# empty / missing / unknown
# ------------------------------------------------------------------------------------------------------
def test_empty_corpus_is_an_error(tmp_path):
    root = tmp_path / "blank"
    _write(root / "a.txt", "")
    _write(root / "b.txt", "  \n\n\t\n")
    with pytest.raises(DataError, match="empty"):
        load_documents(f"text:{root}")
    f = _write(tmp_path / "blank.txt", "\n\n   \n\n")
    with pytest.raises(DataError, match="empty"):
        load_documents(f"text:{f}")


def test_missing_path_and_unknown_kind(tmp_path):
    missing = tmp_path / "does-not-exist.txt"
    with pytest.raises(DataError, match="not found"):
        load_documents(f"text:{missing}")
    with pytest.raises(DataError, match="not found"):
        load_documents(f"jsonl:{tmp_path / 'nope.jsonl'}")
    # an unknown "kind:" prefix is not a kind: the whole string is taken as a (missing) path
    spec = parse_corpus_spec(f"nosuchkind:{missing}")
    assert spec.kind == "text" and spec.target == f"nosuchkind:{missing}"
    with pytest.raises(DataError, match="not found"):
        load_documents(f"nosuchkind:{missing}")
    with pytest.raises(DataError, match="unknown corpus kind"):
        load_documents(CorpusSpec(kind="nosuchkind", target=str(missing)))
    with pytest.raises(DataError):
        load_documents("   ")
    assert issubclass(DataError, QrobustError)


# ------------------------------------------------------------------------------------------------------
# split_documents
# ------------------------------------------------------------------------------------------------------
def test_split_documents_partition_and_determinism():
    docs = [f"doc-{i % 30}" for i in range(40)]  # with duplicates: a multiset
    train, val = split_documents(docs, 0.2, seed=7)
    assert len(val) == 8 and len(train) == 32  # round(0.2 * 40) = 8
    assert collections.Counter(train) + collections.Counter(val) == collections.Counter(docs)
    # disjoint as positions: distinct docs are disjoint as values
    uniq = [f"u{i}" for i in range(40)]
    tr, va = split_documents(uniq, 0.2, seed=7)
    assert not set(tr) & set(va)
    assert sorted(tr + va) == sorted(uniq)
    assert split_documents(uniq, 0.2, seed=7) == (tr, va)
    tr2, va2 = split_documents(uniq, 0.2, seed=8)
    assert set(va2) != set(va)
    assert split_documents(docs, 0.2, seed=7) == (train, val)
    # the input is not modified
    assert docs == [f"doc-{i % 30}" for i in range(40)]


@pytest.mark.parametrize("n,frac,n_val", [
    (10, 0.3, 3), (10, 0.01, 1), (10, 0.99, 9), (2, 0.5, 1), (2, 0.01, 1), (2, 0.99, 1),
    (100, 0.05, 5), (7, 0.4, 3),  # 2.8 -> 3
])
def test_split_documents_n_val(n, frac, n_val):
    docs = [f"d{i}" for i in range(n)]
    train, val = split_documents(docs, frac, seed=0)
    assert len(val) == n_val
    assert len(train) == n - n_val


def test_split_documents_needs_two():
    with pytest.raises(DataError, match="1 document"):
        split_documents(["only one"], 0.5, 0)
    with pytest.raises(DataError):
        split_documents([], 0.5, 0)


# ------------------------------------------------------------------------------------------------------
# pack_blocks / calibration_blocks
# ------------------------------------------------------------------------------------------------------
def test_pack_blocks_exact():
    stream = torch.arange(10)
    blocks = pack_blocks(stream, 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert blocks.dtype == stream.dtype
    blocks[0, 0] = 99  # a copy, not a view of the stream
    assert stream[0].item() == 0
    assert pack_blocks(torch.arange(4), 4).tolist() == [[0, 1, 2, 3]]
    assert pack_blocks(torch.arange(9), 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_pack_blocks_too_short():
    with pytest.raises(DataError, match=r"\b3 tokens\b"):
        pack_blocks(torch.arange(3), 4)
    with pytest.raises(DataError, match=r"\b0 tokens\b"):
        pack_blocks(torch.arange(0), 4)


def _is_window(row: torch.Tensor, stream: torch.Tensor) -> bool:
    T = row.numel()
    for s in range(stream.numel() - T + 1):
        if torch.equal(stream[s:s + T], row):
            return True
    return False


def test_calibration_blocks_windows():
    g = torch.Generator().manual_seed(123)
    stream = torch.randint(0, 50, (600,), generator=g)
    N, T = 6, 16
    a = calibration_blocks(stream, N, T, seed=0)
    assert a.shape == (N, T)
    assert a.dtype == stream.dtype
    assert torch.equal(a, calibration_blocks(stream, N, T, seed=0))
    for row in a:
        assert _is_window(row, stream)
    b = calibration_blocks(stream, N, T, seed=1)
    assert not torch.equal(a, b)
    for row in b:
        assert _is_window(row, stream)
    # unique tokens: every row is consecutive integers
    u = calibration_blocks(torch.arange(1000), 20, 8, seed=3)
    assert torch.equal(u - u[:, :1], torch.arange(8).expand(20, 8))
    assert int(u[:, 0].min()) >= 0 and int(u[:, -1].max()) <= 999


def test_calibration_blocks_limits():
    # one token more than a window: the only start is 0
    s = torch.arange(100, 109)
    out = calibration_blocks(s, 3, 8, seed=5)
    assert out.tolist() == [list(range(100, 108))] * 3
    with pytest.raises(DataError):
        calibration_blocks(torch.arange(8), 2, 8, seed=0)


# ------------------------------------------------------------------------------------------------------
# tokenizers
# ------------------------------------------------------------------------------------------------------
TOK_DOCS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog. The dog sleeps.",
    "for i in range(10):\n    print(i * i)  # squares\n",
    "Lists, tuples and dicts are containers; strings are sequences of characters.",
] * 5

ROUND_TRIP = "Hello , world . It 's  a  test\n\n\tx = [1, 2]  # é 中文 !? don't \r\n end"


def test_byte_tokenizer():
    tok = build_tokenizer("byte", [], 257)
    assert len(tok) == 257
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id is not None
    ids = tok(ROUND_TRIP, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(ROUND_TRIP.encode("utf-8"))  # one token per byte, no merges
    assert tok.eos_token_id not in ids
    assert tok.decode(ids) == ROUND_TRIP
    # the vocabulary is exactly the 256 byte-level symbols plus the end-of-text token
    from tokenizers import pre_tokenizers
    vocab = tok.get_vocab()
    assert set(vocab) == set(pre_tokenizers.ByteLevel.alphabet()) | {"<|endoftext|>"}
    assert sorted(vocab.values()) == list(range(257))
    # every UTF-8 byte of a string is one token: ASCII, 2-, 3- and 4-byte characters
    for ch, n in (("a", 1), ("é", 2), ("中", 3), ("😀", 4)):
        assert len(tok(ch, add_special_tokens=False)["input_ids"]) == n


def test_bpe_tokenizer_vocab_determinism_roundtrip(tmp_path):
    a = build_tokenizer("bpe", TOK_DOCS, 300)
    b = build_tokenizer("bpe", TOK_DOCS, 300)
    assert 257 < len(a) <= 300
    a.save_pretrained(str(tmp_path / "a"))
    b.save_pretrained(str(tmp_path / "b"))
    ja = (tmp_path / "a" / "tokenizer.json").read_text()
    jb = (tmp_path / "b" / "tokenizer.json").read_text()
    assert ja == jb
    for text in TOK_DOCS[:4] + [ROUND_TRIP, ""]:
        ids = a(text, add_special_tokens=False)["input_ids"]
        assert a.decode(ids) == text
    # merges actually learned: common text is shorter than its byte count
    ids = a(TOK_DOCS[1], add_special_tokens=False)["input_ids"]
    assert len(ids) < len(TOK_DOCS[1].encode())


def test_bpe_tokenizer_reloads_with_autotokenizer(tmp_path):
    from transformers import AutoTokenizer
    tok = build_tokenizer("bpe", TOK_DOCS, 300)
    tok.save_pretrained(str(tmp_path / "tok"))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert len(loaded) == len(tok)
    assert loaded.eos_token == tok.eos_token and loaded.eos_token_id == tok.eos_token_id
    for text in TOK_DOCS[:4] + [ROUND_TRIP]:
        assert loaded(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    # and through build_tokenizer(path)
    again = build_tokenizer(str(tmp_path / "tok"), [], 0)
    assert again(ROUND_TRIP)["input_ids"] == tok(ROUND_TRIP, add_special_tokens=False)["input_ids"]
    assert torch.equal(encode_documents(again, TOK_DOCS[:3]), encode_documents(tok, TOK_DOCS[:3]))


def test_tokenizer_folder_missing(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_tokenizer(str(tmp_path / "no-tokenizer"), [], 0)


def test_encode_documents_appends_eos_after_each_doc():
    tok = build_tokenizer("byte", [], 257)
    eos = tok.eos_token_id
    d1, d2 = "hi", "é!"
    e1 = tok(d1, add_special_tokens=False)["input_ids"]
    e2 = tok(d2, add_special_tokens=False)["input_ids"]
    assert len(e1) == 2 and len(e2) == 3  # bytes: h i | 0xC3 0xA9 !
    stream = encode_documents(tok, [d1, d2])
    assert stream.dtype == torch.int64
    assert stream.tolist() == e1 + [eos] + e2 + [eos]
    # eos exactly at positions 2 and 6
    assert [i for i, t in enumerate(stream.tolist()) if t == eos] == [2, 6]
    assert encode_documents(tok, ["x"]).tolist() == tok("x", add_special_tokens=False)["input_ids"] + [eos]


# ------------------------------------------------------------------------------------------------------
# prepare_data
# ------------------------------------------------------------------------------------------------------
def _corpus_folder(root: Path, n: int = 12) -> list[str]:
    docs = []
    for i in range(n):
        text = f"document number {i:02d}: " + ("lorem ipsum " * (i + 1)).strip()
        _write(root / f"doc{i:02d}.txt", text)
        docs.append(text)
    return docs


def _decoded_docs(tok, stream: torch.Tensor) -> list[str]:
    return [tok.decode(seg) for seg in _segments(stream, tok.eos_token_id)]


def test_prepare_data_cache_and_split(tmp_path, monkeypatch):
    docs = _corpus_folder(tmp_path / "corpus")
    cfg = DataConfig(corpus=f"text:{tmp_path / 'corpus'}", tokenizer="byte", seq_len=8, val_fraction=0.25,
                     seed=0, max_chars=None)
    cache = tmp_path / "run" / "data"
    first = prepare_data(cfg, cache)
    assert (cache / "meta.json").is_file() and (cache / "tokens.safetensors").is_file()
    assert (first.n_train_docs, first.n_val_docs) == (9, 3)  # round(0.25 * 12) = 3

    # train / val streams come from disjoint documents, together all of them, per split_documents
    train_docs = _decoded_docs(first.tokenizer, first.train)
    val_docs = _decoded_docs(first.tokenizer, first.val)
    assert (len(train_docs), len(val_docs)) == (9, 3)
    assert not set(train_docs) & set(val_docs)
    assert sorted(train_docs + val_docs) == sorted(docs)
    assert (train_docs, val_docs) == split_documents(docs, 0.25, 0)
    assert first.train.dtype == torch.int64 and first.val.dtype == torch.int64

    # the second call must come from the cache: loading the corpus again would fail
    def boom(*a, **k):
        raise AssertionError("prepare_data rebuilt instead of using its cache")
    monkeypatch.setattr(prepare_mod, "load_documents", boom)
    second = prepare_data(cfg, cache)
    assert torch.equal(first.train, second.train)
    assert torch.equal(first.val, second.val)
    assert (second.n_train_docs, second.n_val_docs) == (9, 3)
    assert second.tokenizer.eos_token_id == first.tokenizer.eos_token_id
    assert second.tokenizer(docs[0], add_special_tokens=False)["input_ids"] == \
        first.tokenizer(docs[0], add_special_tokens=False)["input_ids"]
    monkeypatch.undo()

    # a different config in the same folder rebuilds, never reuses
    key0 = json.loads((cache / "meta.json").read_text())["key"]
    cfg1 = cfg.model_copy(update={"seed": 1})
    third = prepare_data(cfg1, cache)
    key1 = json.loads((cache / "meta.json").read_text())["key"]
    assert key1 != key0
    val1 = _decoded_docs(third.tokenizer, third.val)
    assert (_decoded_docs(third.tokenizer, third.train), val1) == split_documents(docs, 0.25, 1)
    assert set(val1) != set(val_docs)
    assert not torch.equal(third.val, first.val) or not torch.equal(third.train, first.train)
    # and the cache now holds the new config
    monkeypatch.setattr(prepare_mod, "load_documents", boom)
    fourth = prepare_data(cfg1, cache)
    assert torch.equal(fourth.train, third.train) and torch.equal(fourth.val, third.val)


def test_prepare_data_bpe_without_cache(tmp_path):
    docs = _corpus_folder(tmp_path / "corpus", n=8)
    cfg = DataConfig(corpus=str(tmp_path / "corpus"), tokenizer="bpe", vocab_size=300, seq_len=8,
                     val_fraction=0.25, seed=3, max_chars=None)
    data = prepare_data(cfg, None)
    assert len(data.tokenizer) <= 300
    train_docs = _decoded_docs(data.tokenizer, data.train)
    val_docs = _decoded_docs(data.tokenizer, data.val)
    assert (train_docs, val_docs) == split_documents(docs, 0.25, 3)
    assert not any(tmp_path.glob("**/meta.json"))


def test_hf_disk_split_from_spec_string(tmp_path):
    from datasets import Dataset, DatasetDict
    from qrobust.data.corpus import load_documents, parse_corpus_spec
    dd = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b"]}),
                      "validation": Dataset.from_dict({"text": ["v1", "v2", "v3"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    spec = parse_corpus_spec(f"hf-disk:{tmp_path / 'dd'}#validation")
    assert spec.split == "validation" and spec.target == str(tmp_path / "dd")
    assert load_documents(spec) == ["v1", "v2", "v3"]
    assert load_documents(f"hf-disk:{tmp_path / 'dd'}") == ["a", "b"]


def test_hub_dataset_offline_is_one_clear_error(monkeypatch):
    from qrobust.data.corpus import load_documents
    from qrobust.errors import DataError
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="could not load Hugging Face dataset 'hf:no-such-org/no-such-set"):
        load_documents("hf:no-such-org/no-such-set")
