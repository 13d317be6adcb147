"""Methods × number formats end to end on the tiny model: a sweep over ``formats`` writes the records of the
in-memory API, streamed and in memory alike; integer formats keep the keys of their (bits, group size)
records; the report labels them; a format that does not fit a layer is refused naming it before any work;
and the CLI's ``--format``."""
from __future__ import annotations

import json
import shutil

import pytest

from qrobust.errors import QrobustError
from qrobust.sweeps import sweep

FMTS = ["nvfp4", "mxfp4", "fp8-e4m3-channel", "int4-g16"]  # micro widths are 32 and 128: int4-g128 cannot fit
EVAL = {"n_blocks": 6, "batch_size": 4}  # tiny_results' (conftest.TINY_SWEEP), so its records can be reused


def _records(out):
    return {p.name: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


@pytest.mark.slow
def test_format_sweep_streamed_in_memory_and_api_agree(tiny_run, tiny_results, tmp_path):
    import qrobust
    from qrobust.evaluate import evaluate_loss
    from qrobust.models import load_checkpoint
    from qrobust.quant import QuantSpec, quantized
    mem = tmp_path / "mem"
    shutil.copytree(tiny_results, mem)  # holds rtn-w4g16 of every checkpoint: int4-g16 must find it
    cfg = {"trajectory": f"{tiny_run}?run=decay8", "methods": ["rtn", "gptq"], "formats": FMTS, "eval": EVAL,
           "calibration": {"n_samples": 4}}
    s = sweep({**cfg, "out": str(mem)}, progress=False)
    assert (s.records_written, s.records_skipped) == (7, 1)  # rtn int4-g16: the old bits=4 group=16 record
    st = sweep({**cfg, "out": str(tmp_path / "str"), "stream": True}, progress=False)
    assert (st.records_written, st.model_loads) == (8, 1)
    got, ref = _records(tmp_path / "str"), _records(mem)
    assert got.keys() <= ref.keys()
    labels = set()
    for k, r in got.items():
        for part in ("metrics", "blocks", "variant", "weight_error"):
            assert r[part] == ref[k][part], (r["variant"]["label"], part)
        labels.add(r["variant"]["label"])
        assert r["variant"].get("format") == (None if r["variant"]["label"].endswith("w4g16")
                                              else r["variant"]["label"].split("-", 1)[1])
    assert labels == {f"{m}-{f}" for m in ("rtn", "gptq") for f in ("nvfp4", "mxfp4", "fp8-e4m3-channel")} | {
        "rtn-w4g16", "gptq-w4g16"}
    # the in-memory API on the same checkpoint, eval blocks and calibration gives the sweep's numbers
    ck = tiny_run / "checkpoints" / "decay8" / "step-0000012"
    blocks, calib = qrobust.eval_blocks(ck, n_blocks=6), qrobust.calib_blocks(ck, n_samples=4)
    model = load_checkpoint(ck)
    by_label = {r["variant"]["label"]: r for r in got.values()}
    for spec in (QuantSpec("gptq", format="nvfp4"), QuantSpec("rtn", format="mxfp4")):
        with quantized(model, spec, calib):
            loss = evaluate_loss(model, blocks, 4).loss
        assert loss == by_label[spec.label]["metrics"]["loss_q"], spec.label
    # the report names the float formats
    from qrobust.reporting import write_report
    page = write_report(mem).read_text()
    assert all(f"gptq-{f}" in page for f in ("nvfp4", "mxfp4", "fp8-e4m3-channel"))


def test_int4_g128_keeps_the_bits_group_key():
    from qrobust.quant import QuantSpec
    from qrobust.results.parts import variant_dict
    assert variant_dict(QuantSpec("gptq", format="int4-g128")) == variant_dict(QuantSpec("gptq", 4, 128))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fmt,layer,why", [
    ("int4-g128", "gpt_neox.layers.0.attention.query_key_value", "group size 128 is larger than in_features=32"),
    ("fp4-e2m1-g24-e8m0", "gpt_neox.layers.0.attention.query_key_value", "block size 24 .* does not divide "
                                                                          "in_features=32"),
    ("mxfp4", "gpt_neox.layers.0.mlp.dense_4h_to_h", None),  # fits every layer: no refusal
])
def test_a_block_that_does_not_divide_a_layer_is_refused_before_work(tiny_run, tmp_path, stream, fmt, layer, why):
    cfg = {"trajectory": f"{tiny_run}?run=decay8", "out": str(tmp_path / "r"), "formats": [fmt],
           "eval": {"n_blocks": 2}, "stream": stream}
    if why is None:
        assert sweep(cfg, progress=False).records_written == 1
        return
    with pytest.raises(QrobustError, match=f"rtn-{fmt}".replace("int4-g128", "w4g128") + f": layer '{layer}': {why}"):
        sweep(cfg, progress=False)
    assert not [*(tmp_path / "r").glob("records/*.json"), *(tmp_path / "r").glob("fp/*.json")]  # no FP loss either


def _cli(capsys, argv):
    from qrobust.cli import main
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_format_flag(tiny_run, tmp_path, capsys):
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    rc, out, err = _cli(capsys, ["quantize", ck, "--out", tmp_path / "q", "--format", "nvfp4"])
    assert rc == 0 and out.startswith("rtn-nvfp4: 8 linears quantized")
    rep = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert (rep["spec"]["format"], rep["spec"]["bits"], rep["spec"]["group_size"]) == ("nvfp4", 4, 16)
    # a saved checkpoint holds weights: activation / KV formats are for eval and sweeps, refused here
    rc, out, err = _cli(capsys, ["quantize", ck, "--out", tmp_path / "q8", "--format", "w8a8-int8"])
    assert rc == 2 and err.count("\n") == 1 and "rtn-w8ch+a-int8-token: a saved checkpoint holds weights only" in err
    assert not (tmp_path / "q8").exists()
    rc, out, err = _cli(capsys, ["eval", ck, "--format", "int4-g16+a-fp8-e4m3-token+kv-fp8-e4m3-head",
                                 "--n-blocks", "2", "--calib-samples", "2"])
    assert rc == 0 and "rtn-w4g16+a-fp8-e4m3-token+kv-fp8-e4m3-head" in out
    for argv, msg in [(["--format", "nvfp4", "--bits", "4"], "--format nvfp4 sets the bits, groups and grid; "
                                                               "drop --bits"),
                      (["--format", "nvfp4", "--group-size", "16", "--asym"], "drop --group-size, --asym"),
                      (["--format", "fp5"], "unknown number format 'fp5'"),
                      ([], "give the variant: --bits"),
                      (["--format", "w8a8-fp8", "--method", "awq"], "AWQ cannot search its scales under activation"),
                      (["--format", "int4-g128"], "layer 'gpt_neox.layers.0.attention.query_key_value'")]:
        rc, out, err = _cli(capsys, ["quantize", ck, "--out", tmp_path / "bad", *argv])
        assert rc == 2 and err.count("\n") == 1 and msg in err, (argv, err)
        assert not (tmp_path / "bad").exists()
    rc, out, err = _cli(capsys, ["eval", ck, "--format", "mxfp4", "--n-blocks", "2", "--json"])
    assert rc == 0 and json.loads(out)["variant"] == "rtn-mxfp4"


def test_cli_help_lists_the_registered_presets(capsys):
    from qrobust.cli import build_parser
    from qrobust.quant.formats.presets import COMBOS, FORMATS
    with pytest.raises(SystemExit):
        build_parser().parse_args(["quantize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in [*FORMATS, *COMBOS])


def test_stochastic_gptq_is_seeded_per_layer(tiny_run):
    """GPTQ with stochastic rounding: a generator seeded by each layer's name, so the in-memory and the
    layer-streamed paths (and any rerun) give the same numbers; nearest-even NVFP4 differs."""
    import qrobust
    from qrobust.evaluate import evaluate_loss
    from qrobust.models import load_checkpoint
    from qrobust.quant import QuantSpec, quantized
    from qrobust.quant.pipelines.streamed import streamed_losses
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    blocks, calib = qrobust.eval_blocks(ck, n_blocks=3), qrobust.calib_blocks(ck, n_samples=4)
    spec = QuantSpec("gptq", format="fp4-e2m1-g16-e4m3-sr")
    model = load_checkpoint(ck)
    runs = []
    for s in (spec, spec, QuantSpec("gptq", format="nvfp4")):
        with quantized(model, s, calib):
            runs.append(evaluate_loss(model, blocks, 3).block_sums)
    assert runs[0] == runs[1] != runs[2]
    assert streamed_losses(ck, spec, blocks, batch_size=3, calibration=calib).q.block_sums == runs[0]


def test_python_quantize_takes_a_format():
    import torch
    from torch import nn

    from qrobust.quant import quantize
    from qrobust.quant.formats.grid import fake_quantize_format
    from qrobust.quant.formats.presets import FORMATS
    model = nn.Sequential(nn.Linear(64, 8))
    q, res = quantize(model, format="mxfp4")
    assert res.spec.label == "rtn-mxfp4" and res.grids["0"].format == FORMATS["mxfp4"]
    assert torch.equal(q[0].weight, fake_quantize_format(model[0].weight.detach(), FORMATS["mxfp4"])[0])
