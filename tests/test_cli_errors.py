"""CLI error handling: bad input gives ONE clear stderr line naming the problem, a non-zero exit, no traceback,
and never loses or corrupts anything already written.

Everything runs ``qrobust.cli.main`` in-process (fast); a few cases also go through a real subprocess to show
that the console entry point behaves the same. Checkpoints are built untrained (micro model, byte tokenizer).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qrobust.cli import main

SEQ_LEN = 32


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _one_line(err: str) -> str:
    """Assert ``err`` is exactly one non-empty line without a traceback; return it."""
    text = err.rstrip("\n")
    assert text.strip(), "expected an error line on stderr, got nothing"
    assert "\n" not in text, f"expected one stderr line, got {len(text.splitlines())}:\n{err}"
    assert "Traceback" not in text
    return text


def run_fail(capsys, argv: list[str], *mentions: str, code: int | None = None) -> str:
    """Run the CLI expecting a handled failure; return the single stderr line (checked to mention each item)."""
    capsys.readouterr()  # drop anything earlier
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    except Exception as e:  # noqa: BLE001 - an escaping exception is what the console would show as a traceback
        pytest.fail(f"uncaught {type(e).__module__}.{type(e).__name__} escaped main({argv}) -- the console "
                    f"would print a traceback: {str(e).splitlines()[0] if str(e) else ''}", pytrace=False)
    err = capsys.readouterr().err
    assert rc not in (0, None), f"expected a non-zero exit for {argv}, got {rc!r}; stderr: {err}"
    if code is not None:
        assert rc == code
    line = _one_line(err)
    for m in mentions:
        assert str(m) in line, f"{m!r} not named in: {line}"
    return line


def run_argparse_fail(capsys, argv: list[str], *mentions: str) -> str:
    """argparse errors raise SystemExit(2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in argv])
    assert ei.value.code == 2
    line = _one_line(capsys.readouterr().err)
    for m in mentions:
        assert str(m) in line, f"{m!r} not named in: {line}"
    return line


def run_cli_subprocess(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "qrobust.cli", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (hidden files included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------
# fixtures: small untrained checkpoints
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    from qrobust.data.tokenizer import build_tokenizer
    return build_tokenizer("byte", [])


def _state() -> dict:
    from qrobust.config import DataConfig
    return {"step": 0, "data": DataConfig(seq_len=SEQ_LEN, max_chars=200_000).model_dump()}


def _model(vocab_size: int):
    from qrobust.models import build_model
    return build_model("gpt_neox", "micro", vocab_size=vocab_size, max_positions=64)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok) -> Path:
    """A valid safetensors checkpoint folder (tokenizer + qrobust_state.json with the training data config)."""
    from qrobust.models import save_checkpoint
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(_model(len(tok)), tok, path, extra=_state())
    return path


@pytest.fixture(scope="module")
def pickle_ckpt(tmp_path_factory, tok) -> Path:
    """config.json + tokenizer + pytorch_model.bin (pickle), no safetensors."""
    from qrobust.models import save_checkpoint
    path = tmp_path_factory.mktemp("pickle") / "model"
    model = _model(len(tok))
    save_checkpoint(model, tok, path, extra=_state())
    for f in path.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


@pytest.fixture(scope="module")
def small_vocab_ckpt(tmp_path_factory, tok) -> Path:
    """A model embedding 100 ids saved with the 257-token byte tokenizer."""
    from qrobust.models import save_checkpoint
    path = tmp_path_factory.mktemp("vocab") / "model"
    save_checkpoint(_model(100), tok, path, extra=_state())
    return path


@pytest.fixture(scope="module")
def nan_ckpt(tmp_path_factory, tok) -> tuple[Path, str]:
    from qrobust.models import save_checkpoint
    path = tmp_path_factory.mktemp("nan") / "model"
    model = _model(len(tok))
    name = "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"
    with torch.no_grad():
        dict(model.named_parameters())[name][3, 5] = float("nan")
    save_checkpoint(model, tok, path, extra=_state())
    return path, name


# ---------------------------------------------------------------------------------------------------------
# checkpoint paths
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["quantize", "eval"])
def test_missing_checkpoint(capsys, tmp_path, cmd):
    missing = tmp_path / "no-such-model"
    extra = ["--bits", "4", "--group-size", "16", "--out", tmp_path / "q"] if cmd == "quantize" else []
    line = run_fail(capsys, [cmd, missing, *extra], str(missing), code=2)
    assert "not found" in line
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("cmd", ["quantize", "eval"])
def test_folder_is_not_a_model(capsys, tmp_path, cmd):
    folder = tmp_path / "just-a-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    extra = ["--bits", "4", "--group-size", "16", "--out", tmp_path / "q"] if cmd == "quantize" else []
    line = run_fail(capsys, [cmd, folder, *extra], str(folder), code=2)
    assert "config.json" in line
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("cmd", ["quantize", "eval"])
def test_pickle_weights_refused(capsys, tmp_path, pickle_ckpt, cmd):
    extra = ["--bits", "4", "--group-size", "16", "--out", tmp_path / "q"] if cmd == "quantize" else []
    run_fail(capsys, [cmd, pickle_ckpt, *extra], "--allow-pickle", "pytorch_model.bin", str(pickle_ckpt), code=2)
    assert not (tmp_path / "q").exists()


def test_pickle_weights_load_with_allow_pickle(capsys, pickle_ckpt):
    capsys.readouterr()
    rc = main(["eval", str(pickle_ckpt), "--allow-pickle", "--n-blocks", "2", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    res = json.loads(out)
    assert res["n_blocks"] == 2 and res["seq_len"] == SEQ_LEN
    assert math.isfinite(res["loss_fp"]) and 0 < res["loss_fp"] < 20


# ---------------------------------------------------------------------------------------------------------
# quantization arguments
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["quantize", "eval"])
@pytest.mark.parametrize("flag,value", [("--bits", "0"), ("--bits", "9"), ("--bits", "x"),
                                        ("--group-size", "0"), ("--group-size", "-2")])
def test_bad_quant_args(capsys, tmp_path, ckpt, cmd, flag, value):
    argv = [cmd, ckpt, flag, value]
    if cmd == "quantize":
        argv += ["--out", tmp_path / "q"]
        if flag != "--bits":
            argv += ["--bits", "4"]
    elif flag != "--bits":
        argv += ["--bits", "4"]
    line = run_argparse_fail(capsys, argv, value)
    assert ("bits" if flag == "--bits" else "group size") in line
    assert not (tmp_path / "q").exists()


def test_unknown_method(capsys, tmp_path, ckpt):
    run_fail(capsys, ["quantize", ckpt, "--bits", "4", "--method", "nosuch", "--out", tmp_path / "q"],
             "nosuch", code=2)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("method,opt,mention", [("awq", "grid=3", "unknown AWQ option"),
                                                ("awq", "mapping=llama", "mapping"),
                                                ("gptq", "profile=autogptq", "unknown GPTQ profile")])
def test_bad_method_option(capsys, tmp_path, ckpt, method, opt, mention):
    run_fail(capsys, ["quantize", ckpt, "--bits", "4", "--group-size", "16", "--method", method, "--opt", opt,
                      "--out", tmp_path / "q"], mention, code=2)
    assert not (tmp_path / "q").exists()


def test_awq_group_size_larger_than_layer(capsys, tmp_path, ckpt):
    run_fail(capsys, ["eval", ckpt, "--bits", "4", "--group-size", "4096", "--method", "awq",
                      "--calib-samples", "4"], "larger than in_features", code=2)


# ---------------------------------------------------------------------------------------------------------
# corpora
# ---------------------------------------------------------------------------------------------------------
def test_eval_empty_corpus(capsys, tmp_path, ckpt):
    d = tmp_path / "blank"
    d.mkdir()
    (d / "a.txt").write_text("")
    (d / "b.txt").write_text("\n\n   \n")
    line = run_fail(capsys, ["eval", ckpt, "--corpus", f"text:{d}"], str(d), code=2)
    assert "empty" in line


def test_eval_corpus_shorter_than_one_block(capsys, tmp_path, ckpt):
    f = tmp_path / "tiny.txt"
    f.write_text("First paragraph.\n\nSecond one here.\n\nA third.\n\nAnd a fourth paragraph.\n")
    line = run_fail(capsys, ["eval", ckpt, "--corpus", f"text:{f}", "--seq-len", "512"], str(f), code=2)
    assert "512" in line


def test_eval_missing_corpus(capsys, tmp_path, ckpt):
    missing = tmp_path / "nope.txt"
    run_fail(capsys, ["eval", ckpt, "--corpus", f"text:{missing}"], str(missing), code=2)


# ---------------------------------------------------------------------------------------------------------
# broken checkpoints
# ---------------------------------------------------------------------------------------------------------
def test_vocab_mismatch(capsys, small_vocab_ckpt):
    line = run_fail(capsys, ["eval", small_vocab_ckpt], str(small_vocab_ckpt), "257", "100", code=2)
    assert "vocab" in line


@pytest.mark.parametrize("cmd", ["quantize", "eval"])
def test_nan_weights(capsys, tmp_path, nan_ckpt, cmd):
    path, name = nan_ckpt
    extra = ["--bits", "4", "--group-size", "16", "--out", tmp_path / "q"] if cmd == "quantize" else []
    line = run_fail(capsys, [cmd, path, *extra], name, code=2)
    assert "NaN" in line
    assert not (tmp_path / "q").exists()


# ---------------------------------------------------------------------------------------------------------
# train configs
# ---------------------------------------------------------------------------------------------------------
def test_train_missing_config(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    line = run_fail(capsys, ["train", missing, "--out", tmp_path / "run"], str(missing), code=2)
    assert "not found" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,mentions", [
    ("steps: [1, 2\nname: x\n", ("not valid YAML", "train.yaml")),
    ("stepz: 5\n", ("stepz", "unknown key")),
    ("steps: many\n", ("steps", "many")),
    ("optim:\n  lrr: 1\n", ("optim.lrr", "unknown key")),
    ("data:\n  seq_len: 4\n", ("data.seq_len",)),
    ("- just\n- a list\n", ("mapping", "list")),
    ("just a string\n", ("mapping", "str")),
], ids=["invalid-yaml", "unknown-key", "wrong-type", "nested-unknown", "out-of-range", "list-not-mapping",
        "scalar-not-mapping"])
def test_train_bad_config(capsys, tmp_path, text, mentions):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(text)
    run_fail(capsys, ["train", cfg, "--out", tmp_path / "run"], *mentions, code=2)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------
# unwritable outputs
# ---------------------------------------------------------------------------------------------------------
def test_train_out_under_regular_file(capsys, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    cfg = tmp_path / "train.yaml"
    cfg.write_text("steps: 2\nmodel:\n  preset: micro\n")
    out = blocker / "run"
    run_fail(capsys, ["train", cfg, "--out", out], str(out), code=2)
    assert blocker.read_text() == "keep me"


def test_sweep_out_under_regular_file(capsys, tmp_path, ckpt):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    out = blocker / "results"
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"trajectory: {json.dumps(str(ckpt))}\nout: {json.dumps(str(out))}\nbits: [4]\n")
    run_fail(capsys, ["sweep", cfg, "--quiet"], str(out), code=2)
    assert blocker.read_text() == "keep me"


def test_sweep_config_not_a_mapping(capsys, tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("- trajectory: x\n")
    run_fail(capsys, ["sweep", cfg, "--quiet", "--out", tmp_path / "r"], "mapping", code=2)
    assert not (tmp_path / "r").exists()


def test_sweep_bad_config_key(capsys, tmp_path, ckpt):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"trajectory: {json.dumps(str(ckpt))}\nout: {json.dumps(str(tmp_path / 'r'))}\nbits: [9]\n")
    run_fail(capsys, ["sweep", cfg, "--quiet"], "bits", "9", code=2)
    assert not (tmp_path / "r").exists()


def test_quantize_out_is_checkpoint(capsys, ckpt):
    before = snapshot(ckpt)
    line = run_fail(capsys, ["quantize", ckpt, "--bits", "4", "--group-size", "16", "--out", ckpt], "--out", code=2)
    assert "checkpoint" in line
    assert snapshot(ckpt) == before


def test_quantize_out_is_checkpoint_other_spelling(capsys, ckpt):
    before = snapshot(ckpt)
    other = ckpt.parent / "." / ckpt.name
    run_fail(capsys, ["quantize", ckpt, "--bits", "4", "--group-size", "16", "--out", f"{other}{os.sep}"], "--out", code=2)
    assert snapshot(ckpt) == before


def test_quantize_out_under_regular_file(capsys, tmp_path, ckpt):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    run_fail(capsys, ["quantize", ckpt, "--bits", "4", "--group-size", "16", "--out", blocker / "q"], str(blocker), code=2)
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_quantize_out_is_regular_file(capsys, tmp_path, ckpt):
    """--out naming an existing regular file must be refused, not renamed away and replaced by a folder."""
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    run_fail(capsys, ["quantize", ckpt, "--bits", "4", "--group-size", "16", "--out", target], str(target), code=2)
    assert target.is_file() and target.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_quantize_out_is_unrelated_folder(capsys, tmp_path, ckpt):
    """--out naming an existing folder that is not a qrobust-quantized checkpoint (here: someone's data) must be
    refused; replacing it would silently delete its contents."""
    target = tmp_path / "precious"
    (target / "sub").mkdir(parents=True)
    (target / "results.csv").write_text("a,b\n1,2\n")
    (target / "sub" / "notes.txt").write_text("keep me")
    before = snapshot(target)
    run_fail(capsys, ["quantize", ckpt, "--bits", "4", "--group-size", "16", "--out", target], str(target), code=2)
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def test_results_out_under_regular_file(capsys, tmp_path):
    from qrobust.results.store import Store
    Store(tmp_path / "res")
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    run_fail(capsys, ["results", tmp_path / "res", "--format", "csv", "--out", blocker / "r.csv"], str(blocker),
             code=2)
    assert blocker.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------------------
# damaged checkpoint folders
# ---------------------------------------------------------------------------------------------------------
def _copy(ckpt: Path, dest: Path) -> Path:
    shutil.copytree(ckpt, dest)
    return dest


@pytest.mark.parametrize("cmd", ["quantize", "eval"])
def test_truncated_safetensors(capsys, tmp_path, ckpt, cmd):
    d = _copy(ckpt, tmp_path / "trunc")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    extra = ["--bits", "4", "--group-size", "16", "--out", tmp_path / "q"] if cmd == "quantize" else []
    run_fail(capsys, [cmd, d, *extra], str(d), code=2)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("state_text", ["{oops", json.dumps({"step": 0, "data": {"seq_len": "x"}})],
                         ids=["not-json", "bad-data-config"])
def test_eval_damaged_state_file(capsys, tmp_path, ckpt, state_text):
    d = _copy(ckpt, tmp_path / "damaged")
    (d / "qrobust_state.json").write_text(state_text)
    run_fail(capsys, ["eval", d], "qrobust_state.json", code=2)


@pytest.mark.parametrize("cmd", ["quantize", "eval"])
def test_missing_tokenizer(capsys, tmp_path, ckpt, cmd):
    """A model folder without tokenizer files must be reported as such (not as a too-short corpus), and
    quantize must not write a checkpoint with a made-up empty tokenizer."""
    d = _copy(ckpt, tmp_path / "notok")
    for f in list(d.glob("tokenizer*")) + list(d.glob("special_tokens_map.json")):
        f.unlink()
    extra = ["--bits", "4", "--group-size", "16", "--out", tmp_path / "q"] if cmd == "quantize" else []
    line = run_fail(capsys, [cmd, d, *extra], str(d), code=2)
    assert "tokenizer" in line
    assert not (tmp_path / "q").exists()


# ---------------------------------------------------------------------------------------------------------
# results / report folders
# ---------------------------------------------------------------------------------------------------------
def test_results_not_a_results_folder(capsys, tmp_path):
    d = tmp_path / "random"
    d.mkdir()
    (d / "x.txt").write_text("x")
    line = run_fail(capsys, ["results", d], str(d), code=2)
    assert "results folder" in line


def test_results_missing_folder(capsys, tmp_path):
    d = tmp_path / "missing"
    run_fail(capsys, ["results", d], str(d), code=2)
    assert not d.exists()


def test_report_not_a_results_folder(capsys, tmp_path):
    try:
        import qrobust.reporting  # noqa: F401
    except ImportError as e:  # the report module may still be in progress
        pytest.skip(f"qrobust.reporting not importable: {e}")
    d = tmp_path / "random"
    d.mkdir()
    line = run_fail(capsys, ["report", d], str(d), code=2)
    assert "results folder" in line
    assert not (d / "report").exists()


def test_report_out_under_regular_file(capsys, tmp_path):
    try:
        import qrobust.reporting  # noqa: F401
    except ImportError as e:
        pytest.skip(f"qrobust.reporting not importable: {e}")
    from qrobust.results.store import Store
    Store(tmp_path / "res")
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    run_fail(capsys, ["report", tmp_path / "res", "--out", blocker / "rep"], str(blocker), code=2)
    assert blocker.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------------------
# nothing already computed is lost
# ---------------------------------------------------------------------------------------------------------
def test_failed_quantize_keeps_previous_output(capsys, tmp_path, ckpt, nan_ckpt):
    out = tmp_path / "q4"
    capsys.readouterr()
    assert main(["quantize", str(ckpt), "--bits", "4", "--group-size", "16", "--out", str(out)]) == 0
    capsys.readouterr()
    assert (out / "config.json").is_file() and (out / "quantization.json").is_file()
    assert list(out.glob("*.safetensors"))
    before = snapshot(out)
    siblings = sorted(p.name for p in tmp_path.iterdir())

    # argparse-level failures
    run_argparse_fail(capsys, ["quantize", ckpt, "--bits", "0", "--out", out], "0")
    run_argparse_fail(capsys, ["quantize", ckpt, "--bits", "4", "--group-size", "-2", "--out", out], "-2")
    # failures after the model is loaded / while loading
    run_fail(capsys, ["quantize", ckpt, "--bits", "4", "--method", "nosuch", "--out", out], "nosuch")
    run_fail(capsys, ["quantize", nan_ckpt[0], "--bits", "4", "--group-size", "16", "--out", out], nan_ckpt[1])
    run_fail(capsys, ["quantize", tmp_path / "missing", "--bits", "4", "--group-size", "16", "--out", out], "missing")

    assert snapshot(out) == before
    # no temporary / backup folders left next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings


# ---------------------------------------------------------------------------------------------------------
# the console entry point (real subprocess)
# ---------------------------------------------------------------------------------------------------------
def test_subprocess_missing_checkpoint(tmp_path):
    missing = tmp_path / "no-such-model"
    p = run_cli_subprocess(["eval", missing], tmp_path)
    assert p.returncode == 2
    line = _one_line(p.stderr)
    assert str(missing) in line and "not found" in line


def test_subprocess_bad_bits(tmp_path, ckpt):
    p = run_cli_subprocess(["quantize", ckpt, "--bits", "9", "--out", tmp_path / "q"], tmp_path)
    assert p.returncode == 2
    line = _one_line(p.stderr)
    assert "bits" in line and "9" in line
    assert not (tmp_path / "q").exists()


def test_subprocess_train_unknown_key(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("stepz: 5\n")
    p = run_cli_subprocess(["train", cfg, "--out", tmp_path / "run"], tmp_path)
    assert p.returncode == 2
    line = _one_line(p.stderr)
    assert "stepz" in line
    assert p.stdout == ""


# ---------------------------------------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,mentions", [
    ([], ("demo", "train", "quantize", "eval", "sweep", "report", "results")),
    (["demo"], ("--quick", "--out")),
    (["train"], ("config", "--out", "--steps")),
    (["quantize"], ("checkpoint", "--out", "--bits", "--group-size", "--method", "--allow-pickle")),
    (["eval"], ("checkpoint", "--corpus", "--bits", "--group-size", "--seq-len", "--n-blocks")),
    (["sweep"], ("config", "--out")),
    (["report"], ("results", "--out")),
    (["results"], ("results", "--format", "--out")),
], ids=lambda v: "-".join(v) if isinstance(v, list) else None)
def test_help(capsys, argv, mentions):
    capsys.readouterr()
    with pytest.raises(SystemExit) as ei:
        main([*argv, "--help"])
    assert ei.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("usage: qrobust")
    if argv:
        assert f"qrobust {argv[0]}" in out
    for m in mentions:
        assert m in out, f"{m!r} missing from help of {argv}"


def test_no_command_is_not_success(capsys):
    capsys.readouterr()
    rc = main([])
    assert rc != 0
    assert "usage: qrobust" in capsys.readouterr().out
