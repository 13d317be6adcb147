"""Token shards on disk: the writer gives the in-memory path's exact token streams, the reader packs blocks as
``pack_blocks`` of the concatenated stream, and writing is resumable, atomic and refuses foreign folders."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qrobust.config import DataConfig
from qrobust.data.blocks import calibration_blocks, pack_blocks
from qrobust.data.prepare import prepare_data
from qrobust.data.shard_format import ShardSettings, shard_settings, token_dtype
from qrobust.data import shard_writer
from qrobust.data.shard_writer import write_shards
from qrobust.data.shards import open_shards
from qrobust.errors import DataError, WriteError

CHARS, VOCAB = 150_000, 300


def _stream(shards, split: str) -> torch.Tensor:
    s = shards.stream(split)
    return torch.from_numpy(s.read(0, len(s)))


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def builtin_ref():
    return prepare_data(DataConfig(max_chars=CHARS, vocab_size=VOCAB))


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """The builtin corpus in files of >= 4000 tokens, encoded by 2 worker processes."""
    out = tmp_path_factory.mktemp("shards") / "many"
    write_shards(ShardSettings(max_chars=CHARS, vocab_size=VOCAB, shard_tokens=4000), out, num_proc=2, progress=False)
    return out


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "one"
    write_shards(ShardSettings(max_chars=CHARS, vocab_size=VOCAB), out, progress=False)
    return out


def test_builtin_shards_equal_the_in_memory_streams(many, builtin_ref):
    sh = open_shards(many)
    assert len(sh.manifest["splits"]["train"]["files"]) > 5  # really many files
    assert torch.equal(_stream(sh, "train"), builtin_ref.train)
    assert torch.equal(_stream(sh, "val"), builtin_ref.val)
    assert torch.equal(sh.val_tokens(), builtin_ref.val)
    assert sh.manifest["splits"]["train"]["n_documents"] == builtin_ref.n_train_docs
    assert sh.manifest["splits"]["val"]["n_documents"] == builtin_ref.n_val_docs
    assert sh.manifest["dtype"] == "uint16" and sh.manifest["tokenizer"]["vocab_size"] == len(builtin_ref.tokenizer)
    assert sh.tokenizer.get_vocab() == builtin_ref.tokenizer.get_vocab()


def test_index_marks_every_document_end_with_eos(many):
    sh = open_shards(many)
    eos = sh.manifest["tokenizer"]["eos_id"]
    for f in sh.manifest["splits"]["train"]["files"]:
        idx = np.load(many / f["index"])
        tokens = np.fromfile(many / f["tokens"], dtype=np.uint16)
        assert idx[0] == 0 and idx[-1] == len(tokens) == f["n_tokens"] and len(idx) - 1 == f["n_documents"]
        assert (tokens[idx[1:].astype(np.int64) - 1] == eos).all()  # each document ends with end-of-text


def test_one_file_and_many_files_give_the_same_blocks(one, many, builtin_ref):
    a, b = open_shards(one), open_shards(many)
    assert len(a.manifest["splits"]["train"]["files"]) == 1
    ref = pack_blocks(builtin_ref.train, 48)
    ba, bb = a.train_blocks(48), b.train_blocks(48)
    assert len(ba) == len(bb) == ref.shape[0] == builtin_ref.train.numel() // 48
    order = torch.randperm(len(ba), generator=torch.Generator().manual_seed(1)).tolist()
    assert torch.equal(ba.take(order), ref[order]) and torch.equal(bb.take(order), ref[order])
    starts = np.cumsum([f["n_tokens"] for f in b.manifest["splits"]["train"]["files"]])[:-1]
    crossing = [i for i in range(len(bb)) if any(i * 48 < s < (i + 1) * 48 for s in starts)]
    assert crossing and torch.equal(bb.take(crossing), ref[crossing])  # blocks that span two files
    assert bb.take([]).shape == (0, 48)


def test_reader_opens_only_the_files_it_reads(many):
    blocks = open_shards(many).train_blocks(32)
    blocks.take([0, 1])
    assert blocks.stream.opened == [0]  # lazily: one file opened, nothing loaded
    with pytest.raises(IndexError):
        blocks.take([len(blocks)])


def test_calibration_windows_equal_calibration_blocks(many, builtin_ref):
    got = open_shards(many).calibration_windows(7, 40, seed=3)
    assert torch.equal(got, calibration_blocks(builtin_ref.train, 7, 40, 3))


def test_text_corpus_with_byte_tokenizer_equals_in_memory(tmp_path):
    paras = [f"paragraph {i}: " + "lorem ipsum dolor " * (i % 7 + 1) for i in range(40)]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(paras))
    write_shards(shard_settings(f"text:{corpus}", tokenizer="byte", val_fraction=0.2, seed=5, shard_tokens=300),
                 tmp_path / "s", progress=False)
    ref = prepare_data(DataConfig(corpus=f"text:{corpus}", tokenizer="byte", val_fraction=0.2, seed=5))
    sh = open_shards(tmp_path / "s")
    assert torch.equal(_stream(sh, "train"), ref.train) and torch.equal(_stream(sh, "val"), ref.val)
    assert sh.manifest["splits"]["val"]["n_documents"] == 8  # round(0.2 * 40)
    # byte tokens: a document is its UTF-8 bytes then end-of-text (id 256)
    assert sh.manifest["splits"]["train"]["n_tokens"] + sh.manifest["splits"]["val"]["n_tokens"] == \
        sum(len(p.encode()) + 1 for p in paras)


def test_jsonl_corpus_with_a_field_equals_in_memory(tmp_path):
    rows = [{"body": f"record {i} " + "words and more words " * (i % 5 + 1), "id": i} for i in range(30)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in rows))
    write_shards(shard_settings(f"jsonl:{corpus}", field="body", vocab_size=270, shard_tokens=200), tmp_path / "s",
                 num_proc=2, progress=False)
    ref = prepare_data(DataConfig(corpus=f"jsonl:{corpus}", field="body", vocab_size=270))
    sh = open_shards(tmp_path / "s")
    assert torch.equal(_stream(sh, "train"), ref.train) and torch.equal(_stream(sh, "val"), ref.val)


def test_token_dtype_widens_past_65536():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_rerun_skips_complete_files_and_resumes_the_rest(many, tmp_path, monkeypatch):
    import shutil
    out = tmp_path / "r"
    shutil.copytree(many, out)
    want = _bytes(out)
    n_files = len(json.loads((out / "manifest.json").read_text())["splits"]["train"]["files"])
    (out / "manifest.json").unlink()  # a kill before the end: the last train files and val never written
    for k in range(n_files - 2, n_files):
        (out / f"train-{k:05d}.idx.npy").unlink()
    (out / "val-00000.bin").unlink()
    written = []
    real = shard_writer.write_tokens
    monkeypatch.setattr(shard_writer, "write_tokens", lambda f, t: (written.append(f.name), real(f, t)))
    write_shards(ShardSettings(max_chars=CHARS, vocab_size=VOCAB, shard_tokens=4000), out, progress=False)
    names = {Path(n).name.split(".")[1] for n in written}
    assert names == {f"train-{n_files - 2:05d}", f"train-{n_files - 1:05d}", "val-00000"}
    assert _bytes(out) == want


def test_full_disk_is_one_line_leaves_no_half_file_and_a_rerun_completes(many, tmp_path, monkeypatch):
    out = tmp_path / "full"
    calls = []

    def full(f, tokens):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(tokens.tobytes())
    monkeypatch.setattr(shard_writer, "write_tokens", full)
    settings = ShardSettings(max_chars=CHARS, vocab_size=VOCAB, shard_tokens=4000)
    with pytest.raises(WriteError) as e:
        write_shards(settings, out, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and "train-00002.bin" in msg
    assert "re-run the same 'qrobust data prepare'" in msg
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if n.startswith(".")] and "train-00002.bin" not in left and "manifest.json" not in left
    monkeypatch.undo()
    write_shards(settings, out, progress=False)
    assert _bytes(out) == _bytes(many)


def test_folder_with_other_settings_or_other_files_is_refused(many, tmp_path):
    with pytest.raises(DataError, match=r"other settings \(vocab_size 300 there, 301 asked\)"):
        write_shards(ShardSettings(max_chars=CHARS, vocab_size=301, shard_tokens=4000), many, progress=False)
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(DataError, match="not empty and holds no qrobust shards"):
        write_shards(ShardSettings(max_chars=CHARS, vocab_size=VOCAB), tmp_path, progress=False)
    with pytest.raises(DataError, match="unknown shard option 'vocab'"):
        shard_settings("builtin", vocab=3)


def test_complete_folder_is_returned_without_rework(many, monkeypatch):
    monkeypatch.setattr(shard_writer, "load_documents", lambda *a, **k: pytest.fail("corpus reloaded"))
    m = write_shards(ShardSettings(max_chars=CHARS, vocab_size=VOCAB, shard_tokens=4000), many, progress=False)
    assert m == json.loads((many / "manifest.json").read_text())


def test_open_shards_missing_or_foreign_folder_is_one_line(tmp_path):
    with pytest.raises(DataError, match="shard folder not found"):
        open_shards(tmp_path / "nope")
    with pytest.raises(DataError, match="not a complete token shard folder"):
        open_shards(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a qrobust shard manifest"):
        open_shards(tmp_path)


def test_cli_data_prepare_and_its_errors(tmp_path, capsys):
    from qrobust.cli import main
    out = tmp_path / "s"
    assert main(["data", "prepare", "builtin", "--out", str(out), "--max-chars", "60000", "--vocab-size", "280",
                 "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert f"train {m['splits']['train']['n_tokens']:,} tokens" in capsys.readouterr().out
    assert main(["data", "prepare", "builtin", "--out", str(out), "--max-chars", "60000", "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    assert main(["data", "prepare", f"text:{tmp_path / 'blank.txt'}", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is empty" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    assert main(["data", "prepare", "nosuch:thing", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "corpus path not found" in capsys.readouterr().err


def test_synthetic_shard_helper_writes_a_readable_folder(tmp_path):
    from shard_helpers import write_synthetic_shards
    m = write_synthetic_shards(tmp_path / "syn", n_train=10_000, n_val=500, file_tokens=3_000, doc_tokens=700)
    sh = open_shards(tmp_path / "syn")
    assert [f["n_tokens"] for f in m["splits"]["train"]["files"]] == [3000, 3000, 3000, 1000]
    assert m["splits"]["train"]["n_documents"] == 5 + 5 + 5 + 2  # ceil(3000 / 700) per full file, ceil(1000/700)
    files = [np.fromfile(tmp_path / "syn" / f["tokens"], dtype=np.uint16) for f in m["splits"]["train"]["files"]]
    whole = torch.from_numpy(np.concatenate(files).astype(np.int64))
    assert torch.equal(sh.train_blocks(128).take(range(78)), pack_blocks(whole, 128))  # 10000 // 128 = 78
    assert sh.val_tokens().numel() == 500 and int(sh.val_tokens().max()) < 257
