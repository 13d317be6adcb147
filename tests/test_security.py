"""Security: a model folder's own Python code never runs unless the user asks for it (and transformers can
never ask on stdin), and no name from a config or manifest makes qrobust write outside the folder the user
named.

The remote-code folder is a real micro checkpoint whose config.json and tokenizer_config.json carry an
``auto_map`` pointing at ``evil.py``; importing that file creates a marker file, so "the code ran" is a file
on disk, whatever qrobust prints.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qrobust.cli import main
from test_cli_errors import run_fail

SEQ_LEN = 32
EVIL = """
from pathlib import Path
Path({marker!r}).write_text("the folder's code ran")
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast


class EvilConfig(GPTNeoXConfig):
    model_type = "evil"


class EvilModel(GPTNeoXForCausalLM):
    config_class = EvilConfig


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _checkpoint(path: Path) -> Path:
    """An untrained micro checkpoint (byte tokenizer, training data config) at ``path``."""
    from qrobust.config import DataConfig
    from qrobust.data.tokenizer import build_tokenizer
    from qrobust.models import build_model, save_checkpoint
    tok = build_tokenizer("byte", [])
    model = build_model("gpt_neox", "micro", vocab_size=len(tok), max_positions=64)
    save_checkpoint(model, tok, path, extra={"step": 0, "data": DataConfig(seq_len=SEQ_LEN, max_chars=200_000)
                                             .model_dump()})
    return path


def _add_remote_code(folder: Path, marker: Path) -> Path:
    """Give ``folder`` custom code: auto_map in config.json and tokenizer_config.json -> evil.py."""
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(cfg))
    tcfg = json.loads((folder / "tokenizer_config.json").read_text())
    tcfg.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg))
    return folder


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> tuple[Path, Path]:
    """(folder with custom code, marker file its code would create)."""
    root = tmp_path_factory.mktemp("evil")
    marker = root / "MARKER-code-ran"
    return _add_remote_code(_checkpoint(root / "evil_model"), marker), marker


def _env(tmp: Path) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
            "HF_MODULES_CACHE": str(tmp / "hf_modules"),  # custom code copied there, not to the user's cache
            "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cli(argv: list, tmp: Path, stdin: str = "y\ny\ny\n") -> subprocess.CompletedProcess:
    """The console command, with a "yes" ready on stdin for any [y/N] question."""
    return subprocess.run([sys.executable, "-m", "qrobust.cli", *map(str, argv)], input=stdin, capture_output=True,
                          text=True, cwd=tmp, env=_env(tmp), timeout=300)


def _sweep_yaml(tmp: Path, trajectory: Path | str, out: Path, **over) -> Path:
    cfg = {"trajectory": str(trajectory), "out": str(out), "methods": ["rtn"], "bits": [4], "group_sizes": [-1],
           "eval": {"n_blocks": 2, "seq_len": 16}, **over}
    p = tmp / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _refused(line: str) -> None:
    assert "--trust-remote-code" in line and "own Python code" in line, line


def _listing(folder: Path) -> set[str]:
    """Every path under ``folder`` (files and folders, hidden ones included)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------------------------------------------------
# remote code: refused without the flag, in-process
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["eval", "{m}", "--n-blocks", "2", "--seq-len", "16"],
    ["eval", "{m}", "--bits", "4", "--group-size", "-1", "--stream", "--n-blocks", "2", "--seq-len", "16"],
    ["eval", "{m}", "--bits", "4", "--method", "gptq", "--group-size", "-1", "--stream", "--n-blocks", "2",
     "--seq-len", "16", "--calib-samples", "2", "--calib-seq-len", "16"],
    ["quantize", "{m}", "--bits", "4", "--group-size", "-1", "--out", "{tmp}/q"],
    ["sharpness", "{m}", "--n-blocks", "1", "--seq-len", "16", "--trace", "none", "--iters", "2"],
    ["landscape", "{m}", "--out", "{tmp}/land", "--plane", "random", "--grid", "2", "--n-blocks", "1",
     "--seq-len", "16", "--quiet"],
], ids=["eval", "eval-stream", "eval-stream-gptq", "quantize", "sharpness", "landscape"])
def test_remote_code_refused_in_process(capsys, tmp_path, evil, argv):
    folder, marker = evil
    argv = [a.format(m=folder, tmp=tmp_path) for a in argv]
    _refused(run_fail(capsys, argv, str(folder.name)))
    assert not marker.exists(), "the folder's Python code ran without --trust-remote-code"


def test_sweep_refuses_remote_code_in_process(capsys, tmp_path, evil):
    folder, marker = evil
    _refused(run_fail(capsys, ["sweep", _sweep_yaml(tmp_path, folder, tmp_path / "res"), "--quiet"]))
    assert not marker.exists(), "the folder's Python code ran in a sweep without trust_remote_code"
    assert not list((tmp_path / "res" / "records").glob("*.json")) if (tmp_path / "res").is_dir() else True


def test_train_refuses_a_tokenizer_folder_with_remote_code(capsys, tmp_path, evil):
    folder, marker = evil
    cfg = {"name": "t", "out": str(tmp_path / "run"), "steps": 2, "batch_size": 2, "checkpoint_every": 2,
           "data": {"corpus": "builtin", "max_chars": 50_000, "seq_len": 32, "tokenizer": str(folder)},
           "model": {"arch": "gpt_neox", "preset": "micro"}}
    p = tmp_path / "train.yaml"
    p.write_text(yaml.safe_dump(cfg))
    _refused(run_fail(capsys, ["train", p, "--quiet"]))
    assert not marker.exists()


def test_every_loader_passes_the_flag_explicitly(evil):
    """The library functions refuse too (the flag defaults to False and is passed, never None)."""
    from qrobust.api import calib_blocks, eval_blocks
    from qrobust.data.tokenizer import load_tokenizer
    from qrobust.errors import CheckpointError
    from qrobust.layerwise.weights import skeleton
    from qrobust.models import load_checkpoint
    import torch
    folder, marker = evil
    for call in (lambda: load_tokenizer(folder), lambda: load_checkpoint(folder), lambda: eval_blocks(folder),
                 lambda: calib_blocks(folder, n_samples=2, seq_len=16),
                 lambda: skeleton(folder, torch.float32, False)):
        with pytest.raises(CheckpointError, match="--trust-remote-code"):
            call()
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------
# remote code: a "y" on stdin changes nothing (the console command, as a script would feed it)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["eval-stream", "sweep"])
def test_remote_code_refused_with_yes_on_stdin(tmp_path, evil, kind):
    folder, marker = evil
    if kind == "sweep":
        argv = ["sweep", _sweep_yaml(tmp_path, folder, tmp_path / "res"), "--quiet"]
    else:
        argv = ["eval", folder, "--bits", "4", "--group-size", "-1", "--stream", "--n-blocks", "2", "--seq-len", "16"]
    p = _cli(argv, tmp_path)
    assert p.returncode != 0
    err = p.stderr.strip()
    assert "\n" not in err and "Traceback" not in err and "[y/N]" not in p.stdout + p.stderr, p.stderr
    _refused(err)
    assert not marker.exists(), "a 'y' on stdin ran the folder's Python code"


def test_transformers_cannot_prompt_once_qrobust_is_loaded(tmp_path, evil):
    """Even a loader that forgot the flag (trust_remote_code=None) refuses instead of asking on stdin."""
    folder, marker = evil
    code = ("import qrobust.models\nfrom transformers import AutoTokenizer\n"
            f"try:\n    AutoTokenizer.from_pretrained({str(folder)!r}, local_files_only=True)\n"
            "except ValueError:\n    print('refused')\n")
    p = subprocess.run([sys.executable, "-c", code], input="y\ny\n", capture_output=True, text=True, cwd=tmp_path,
                       env=_env(tmp_path), timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "refused" and "[y/N]" not in p.stdout + p.stderr
    assert not marker.exists()


def test_remote_code_runs_with_the_flag(tmp_path):
    """--trust-remote-code is the user's yes: the folder's code is imported (and the model evaluated)."""
    marker = tmp_path / "MARKER-allowed"
    folder = _add_remote_code(_checkpoint(tmp_path / "trusted_model"), marker)
    p = _cli(["eval", folder, "--n-blocks", "2", "--seq-len", "16", "--trust-remote-code"], tmp_path, stdin="")
    assert p.returncode == 0, p.stderr
    assert marker.exists()
    assert "loss_fp" in p.stdout
