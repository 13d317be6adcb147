"""The top floors: verdict kinds as a registry (a new kind is used by reproduce), typed options of the wide
API calls, the one-checkpoint workflows behind the CLI (eval, quantize, export), tables, and the CLI
package's entry points."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import qrobust
from qrobust.errors import ConfigError, QrobustError
from qrobust.workflows.options import EvalOptions, ExportOptions, LandscapeOptions, options_only, split_options
from qrobust.workflows.reproduction import verdicts
from qrobust.workflows.reproduction.spec import load_spec

SPEC = """name: tinyexp
finding: "a test finding"
verdict: {verdict}
base:
  seed: 0
  steps: 2
  batch_size: 4
  checkpoint_every: 2
  data: {{corpus: builtin, max_chars: 200000, seq_len: 32, vocab_size: 300}}
  model: {{arch: gpt_neox, preset: micro}}
  optim: {{lr: 3.0e-3}}
  schedule: {{kind: constant, warmup_steps: 1}}
runs:
  solo: {{}}
sweep:
  methods: [rtn]
  bits: [4]
  group_sizes: [16]
  eval: {{n_blocks: 2}}
"""


def _ckpt(run: Path) -> str:
    return str(sorted((run / "checkpoints" / "main").iterdir())[-1])


def test_unknown_verdict_is_one_line_naming_the_known_kinds(tmp_path):
    f = tmp_path / "e.yaml"
    f.write_text(SPEC.format(verdict="nope"))
    with pytest.raises(ConfigError) as e:
        load_spec(f)
    msg = str(e.value)
    assert "\n" not in msg and "unknown verdict 'nope'" in msg
    for kind in ("averaging", "cooldown", "equal_fp_loss"):
        assert kind in msg


def test_a_kind_checks_its_experiment_file(tmp_path):
    f = tmp_path / "e.yaml"
    f.write_text(SPEC.format(verdict="equal_fp_loss"))  # no 'order': the kind refuses it
    with pytest.raises(ConfigError, match="'order' must name at least two of its runs"):
        load_spec(f)


def test_a_registered_verdict_kind_is_used_by_reproduce(tmp_path, monkeypatch):
    """A third party registers a kind with one decorator; an experiment naming it gets its claims.
    (Trains, sweeps and reports a 2-step micro run: 11 s on 2 cores.)"""
    from qrobust.results.store import Store
    monkeypatch.setitem(verdicts.VERDICTS, "count_records", None)  # removed again after the test
    seen = {}

    @verdicts.register_verdict("count_records")
    def count_records(spec, stores):
        (records, _), = stores.values()
        seen["n"] = len(records)
        return [verdicts.claim("every checkpoint has a record", "not_worse", "all", [])]

    f = tmp_path / "e.yaml"
    f.write_text(SPEC.format(verdict="count_records"))
    result = qrobust.reproduce([str(f)], out=tmp_path / "out", progress=False)[0]
    results_dir, = (tmp_path / "out" / "results").iterdir()
    assert seen["n"] == len(Store(results_dir, create=False).records()) > 0
    saved = json.loads((tmp_path / "out" / "tinyexp" / "verdict.json").read_text())
    assert [c["claim"] for c in saved["claims"]] == ["every checkpoint has a record"]
    assert saved["claims"][0]["status"] == "no data" == result["claims"][0]["status"]


def test_split_options_sorts_keywords_into_fields_and_the_rest():
    opts, rest = split_options(ExportOptions, None, {"bits": 3, "damp": 0.02})
    assert opts.bits == 3 and opts.method == "rtn" and rest == {"damp": 0.02}
    opts, _ = split_options(ExportOptions, ExportOptions(method="gptq"), {"bits": 2})
    assert (opts.method, opts.bits) == ("gptq", 2)
    with pytest.raises(ConfigError, match="unknown landscape setting 'gird'; known: plane, runs, grid"):
        options_only(LandscapeOptions, None, {"gird": 3}, "landscape setting")


def test_landscape_options_object_is_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="at least 2 points per side, got 1"):
        qrobust.landscape("no/such/source", tmp_path / "l", options=LandscapeOptions(grid=1))
    with pytest.raises(ConfigError, match="unknown landscape setting 'gird'"):
        qrobust.landscape("no/such/source", tmp_path / "l", gird=3)


def test_export_takes_an_options_object_and_refuses_the_checkpoint_folder(tiny_run, tmp_path):
    ck = _ckpt(tiny_run)
    with pytest.raises(ConfigError, match="unknown export format 'gguf'"):
        qrobust.export(ck, tmp_path / "x", options=ExportOptions(format="gguf"))
    with pytest.raises(QrobustError, match="is the checkpoint folder or inside it"):
        qrobust.export(ck, Path(ck) / "inside", bits=4, group_size=16)


def test_evaluate_checkpoint_is_the_fp_and_quantized_loss(tiny_run):
    from qrobust.models import load_checkpoint
    ck = _ckpt(tiny_run)
    out = qrobust.evaluate_checkpoint(ck, {"method": "rtn", "bits": 4, "group_size": 16}, EvalOptions(n_blocks=2),
                                      progress=False)
    model = load_checkpoint(ck)
    blocks = qrobust.eval_blocks(ck, n_blocks=2)
    fp = qrobust.evaluate_loss(model, blocks).loss
    with qrobust.quantized(model, qrobust.QuantSpec(method="rtn", bits=4, group_size=16)):
        q = qrobust.evaluate_loss(model, blocks).loss
    assert out["loss_fp"] == fp and out["loss_q"] == q and out["dq_rel"] == pytest.approx(q / fp - 1)
    assert out["n_blocks"] == 2 and out["variant"] == "rtn-w4g16"


def test_a_bad_method_option_fails_before_loading(tmp_path):
    with pytest.raises(QrobustError, match="damp|option"):
        qrobust.evaluate_checkpoint(tmp_path / "missing", {"method": "rtn", "bits": 4, "options": {"damp": 0.1}})


def test_quantize_checkpoint_refuses_an_unrelated_folder(tiny_run, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(QrobustError, match="already holds other files"):
        qrobust.quantize_checkpoint(_ckpt(tiny_run), tmp_path / "busy", {"method": "rtn", "bits": 4})
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_results_table_leaves_missing_numbers_empty():
    from qrobust.workflows.tables import format_table
    row = {"checkpoint.name": "c", "checkpoint.step": 4, "checkpoint.tokens": None, "checkpoint.phase": None,
           "variant.method": "rtn", "variant.bits": 4, "variant.group_size": -1, "metrics.loss_fp": 2.5,
           "metrics.loss_q": "n/a", "metrics.dq_rel": 0.01}
    head, line = format_table([row]).splitlines()
    assert head.split() == ["checkpoint", "step", "tokens", "phase", "variant", "loss_fp", "loss_q", "ΔQ", "L", "%"]
    assert line.split() == ["c", "4", "rtn-w4ch", "2.5000", "+1.000"]
    assert format_table([]) == "no records\n"


def test_the_cli_runs_as_a_module_and_as_a_function(capsys):
    from qrobust.cli import main
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"qrobust {qrobust.__version__}"
    r = subprocess.run([sys.executable, "-m", "qrobust.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"qrobust {qrobust.__version__}"


def test_sweep_takes_executor_options_as_an_object_or_keywords(tiny_run, tmp_path):
    from qrobust.workflows.options import ExecutorOptions
    cfg = {"trajectory": str(tiny_run), "out": str(tmp_path / "res")}
    with pytest.raises(ConfigError, match="unknown executor 'nope'; known: array, local, ray"):
        qrobust.sweep(cfg, options=ExecutorOptions(executor="nope"))
    with pytest.raises(ConfigError, match="job arrays and the ray executor do not combine"):
        qrobust.sweep(cfg, executor="ray", array_index=0, array_count=2)
    assert not (tmp_path / "res").exists()
