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
    # GPT-NeoX files name the head 'embed_out'; transformers renames it only for model_type gpt_neox, so the
    # custom model's files must use the module's own name (else its head would be missing, and refused)
    from safetensors.torch import load_file, save_file
    weights = load_file(folder / "model.safetensors")
    weights["lm_head.weight"] = weights.pop("embed_out.weight")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
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
    from qrobust.quant.pipelines.streamed.block_weights import skeleton
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


# ---------------------------------------------------------------------------------------------------------
# names that would become paths outside the named folder
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def sandbox(tmp_path) -> Path:
    """A parent folder whose whole listing is compared before/after: the run's folders live inside it."""
    box = tmp_path / "box"
    box.mkdir()
    return box


def _train_yaml(box: Path, **over) -> Path:
    cfg = {"name": "t", "out": str(box / "a" / "b" / "run"), "steps": 4, "batch_size": 2, "checkpoint_every": 2,
           "data": {"corpus": "builtin", "max_chars": 50_000, "seq_len": 32, "vocab_size": 300},
           "model": {"arch": "gpt_neox", "preset": "micro"}, "schedule": {"kind": "constant", "warmup_steps": 1},
           **over}
    p = box / "train.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("over, mentions", [
    ({"name": "../../x"}, ["'name'", "../../x"]),
    ({"name": "/tmp/qrobust-abs-name"}, ["'name'", "/tmp/qrobust-abs-name"]),
    ({"name": ".hidden"}, ["'name'", "starts with '.'"]),
    ({"name": ""}, ["'name'", "empty"]),
    ({"branches": [{"from_step": 2, "decay_steps": 2, "name": "cool/down"}]}, ["branches.0.name", "cool/down"]),
    ({"branches": [{"from_step": 2, "decay_steps": 2, "name": ".."}]}, ["branches.0.name"]),
    ({"averaging": [{"kind": "ema", "name": "../../ema"}]}, ["averaging.0.name", "../../ema"]),
], ids=["dotdot", "absolute", "hidden", "empty", "branch-slash", "branch-dotdot", "averaged-run"])
def test_train_config_names_refused(capsys, sandbox, over, mentions):
    cfg = _train_yaml(sandbox, **over)
    before = _listing(sandbox)
    run_fail(capsys, ["train", cfg, "--quiet"], *mentions)
    assert _listing(sandbox) == before, "a refused config wrote files"
    assert not Path("/tmp/qrobust-abs-name.json").exists()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A trained micro run (4 steps, checkpoints at 2 and 4) with its manifest."""
    from qrobust.config import TrainConfig, parse_config
    from qrobust.training.loop import train
    out = tmp_path_factory.mktemp("small_run") / "run"
    cfg = {"name": "t", "out": str(out), "steps": 4, "batch_size": 2, "checkpoint_every": 2,
           "data": {"corpus": "builtin", "max_chars": 50_000, "seq_len": 32, "vocab_size": 300},
           "model": {"arch": "gpt_neox", "preset": "micro"}, "schedule": {"kind": "constant", "warmup_steps": 1}}
    train(parse_config(TrainConfig, cfg), progress=False)
    return out


def _edited_manifest(small_run: Path, box: Path, name: str | None = None, run: str | None = None) -> Path:
    """A copy of the run's manifest (checkpoint paths kept absolute) with its name or run names edited."""
    d = json.loads((small_run / "trajectory.json").read_text())
    for c in d["checkpoints"]:
        c["path"] = str((small_run / c["path"]).resolve())
        if run is not None:
            c["run"] = run
    if name is not None:
        d["name"] = name
    if run is not None:
        d["runs"] = {run: d["runs"]["main"]}
    folder = box / "a" / "b" / "edited"
    folder.mkdir(parents=True)
    (folder / "trajectory.json").write_text(json.dumps(d))
    return folder


@pytest.mark.parametrize("name", ["../escape", "../../escape", "/ABS"], ids=["dotdot", "dotdot2", "absolute"])
def test_sweep_manifest_name_cannot_leave_out(capsys, small_run, sandbox, name):
    if name == "/ABS":  # an absolute path inside the sandbox: today the store writes exactly there
        name = str(sandbox / "abs")
    traj = _edited_manifest(small_run, sandbox, name=name)
    out = sandbox / "a" / "b" / "res"
    cfg = _sweep_yaml(sandbox, traj, out)
    before = _listing(sandbox)
    run_fail(capsys, ["sweep", cfg, "--quiet"], "trajectory name", name)
    outside = {p for p in _listing(sandbox) - before if not p.startswith("a/b/res")}
    assert not outside, f"the sweep wrote outside its results folder: {sorted(outside)}"
    assert not (sandbox / "abs.json").exists()


def test_sweep_manifest_run_name_cannot_leave_out(capsys, small_run, sandbox):
    """A run name becomes the averaged run's folder (checkpoints/<run>-lawa2/): refused when read."""
    traj = _edited_manifest(small_run, sandbox, run="../../../esc")
    out = sandbox / "a" / "b" / "res"
    cfg = _sweep_yaml(sandbox, traj, out, average=[{"averager": "lawa", "window": 2}])
    before = _listing(sandbox)
    run_fail(capsys, ["sweep", cfg, "--quiet"], "run name", "../../../esc")
    assert {p for p in _listing(sandbox) - before if not p.startswith("a/b/res")} == set()


def test_average_run_name_cannot_leave_out(capsys, small_run, sandbox):
    traj = _edited_manifest(small_run, sandbox, run="../../../esc")
    out = sandbox / "a" / "b" / "avg"
    before = _listing(sandbox)
    run_fail(capsys, ["average", "lawa", traj, "--window", "2", "--out", out, "--quiet"], "run name", "../../../esc")
    assert _listing(sandbox) == before


def test_averaged_run_name_is_checked_where_the_folder_is_made(tmp_path):
    """The final guard: an averaged run name built from a run that was never checked (e.g. a hub revision's)."""
    from qrobust.averaging.averagers import AverageJob
    from qrobust.averaging.run import folder_of
    from qrobust.errors import ConfigError
    from qrobust.trajectory import Checkpoint
    ck = Checkpoint(name="x", path=str(tmp_path), step=1, run="../../up")
    job = AverageJob("../../up-lawa2", 1, [ck], [1.0], ck, {"averager": "lawa"})
    with pytest.raises(ConfigError, match="averaged run name"):
        folder_of(job, tmp_path / "out")


def test_store_refuses_a_trajectory_name_that_leaves_it(tmp_path):
    from qrobust.errors import ConfigError
    from qrobust.results.store import Store
    from qrobust.trajectory import Trajectory
    store = Store(tmp_path / "res")
    for bad in ("../x", str(tmp_path / "abs"), "a/b", ".x", ""):
        with pytest.raises(ConfigError, match="trajectory name"):
            store.save_trajectory(Trajectory(name=bad, checkpoints=[]))
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "abs.json").exists()
    store.save_trajectory(Trajectory(name="pythia-14m", checkpoints=[]))
    assert (tmp_path / "res" / "trajectories" / "pythia-14m.json").is_file()


def test_folder_derived_trajectory_names_are_plain(tmp_path):
    """A trajectory named after a folder ('.', '..', a hidden folder) gets a plain name, not a refusal."""
    from qrobust.names import name_problem
    from qrobust.trajectory import load_trajectory
    m = _checkpoint(tmp_path / "parent" / ".hidden_model")
    assert name_problem(load_trajectory(m).name) is None
    assert load_trajectory(m).name == "hidden_model"
    cwd = os.getcwd()
    try:
        os.chdir(m)
        assert load_trajectory(".").name == "hidden_model"
    finally:
        os.chdir(cwd)


def test_reproduce_experiment_name_refused(capsys, sandbox):
    exp = {"name": "../../escape", "finding": "x", "verdict": "cooldown",
           "base": {"steps": 4, "checkpoint_every": 2, "model": {"preset": "micro"}}, "runs": {"r": {}}}
    p = sandbox / "exp.yaml"
    p.write_text(yaml.safe_dump(exp))
    out = sandbox / "a" / "b" / "rep"
    before = _listing(sandbox)
    run_fail(capsys, ["reproduce", p, "--out", out, "--quiet"], "experiment name", "../../escape")
    assert _listing(sandbox) == before


@pytest.mark.parametrize("label", ["..", ".x", "a/b"])
def test_reproduce_run_label_refused(capsys, sandbox, label):
    exp = {"name": "e", "finding": "x", "verdict": "cooldown",
           "base": {"steps": 4, "checkpoint_every": 2, "model": {"preset": "micro"}}, "runs": {label: {}}}
    p = sandbox / "exp.yaml"
    p.write_text(yaml.safe_dump(exp))
    before = _listing(sandbox)
    run_fail(capsys, ["reproduce", p, "--out", sandbox / "a" / "b" / "rep", "--quiet"], "run label")
    assert _listing(sandbox) == before


def test_valid_names_still_work(tmp_path):
    """Names users really give (dots inside, dashes, digits, unicode) pass unchanged."""
    from qrobust.names import file_stem, safe_name
    for ok in ("main", "decay800", "main-ema0.999", "cooldown_tiny", "pythia-14m", "run.v2", "läuft"):
        assert safe_name(ok, "name") == ok and file_stem(ok) == ok
    assert file_stem("../x") == "_x" and file_stem(".") == "x" and file_stem("a/b") == "a_b"
