"""The paper's own statements beside qrobust's measurements: the shipped data file, its validation, the
pairing with a verdict (directions and relative sizes derived by hand), and the page section."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qrobust.errors import ConfigError
from qrobust.workflows.reproduction import paper
from qrobust.workflows.reproduction.page import render
from qrobust.workflows.reproduction.spec import builtin_names

ENTRY = """
- id: {id}
  finding: F2
  experiment: [f2]
  model: Pythia-160M
  bits: {bits}
  quantity: ΔQ L after decay − before
  value: {value}
  unit: ΔQ L
  claim: {claim}
  relative: b
  source:
    - {{document: slides, where: slide 3, quote: "decay raises the error"}}
  approximate: false
"""


def _numbers(*entries: dict) -> list[paper.PaperNumber]:
    defaults = {"id": "e", "bits": "[3, 4]", "value": '"+"', "claim": "cooldown_vs_constant"}
    return paper.load_paper_numbers("".join(ENTRY.format(**{**defaults, **e}) for e in entries), "test file")


def _comp(diff, low, high, dq_b=None, dq_a=None, **kw):
    out = {"diff": diff, "low": low, "high": high, "a": "decay", "b": "main", **kw}
    if dq_b is not None:
        out["dq_b"] = dq_b
    if dq_a is not None:
        out["dq_a"] = dq_a
    return out


F2_TEXT = "ΔQ L at the end of a cooldown is above the constant-LR run's at the same step"


def _claim(cell, comps, text=F2_TEXT, **kw):
    return {"cell": cell, "claim": text, "status": "partly", "comparisons": comps, **kw}


# -- the shipped file -------------------------------------------------------------------------------------------
def test_shipped_file_loads_and_every_entry_is_sourced():
    numbers = paper.paper_numbers()
    assert len(numbers) >= 10 and len({n.id for n in numbers}) == len(numbers)
    known = set(builtin_names()) | {"scaling"}
    for n in numbers:
        assert n.source and all(s.document and s.where and len(s.quote) >= 20 for s in n.source), n.id
        assert set(n.experiment) <= known, n.id
        assert n.expected() in paper.DIRECTIONS, n.id  # the public sources give directions only
        assert not n.approximate  # nothing is read off a figure
    by = {n.id: n for n in numbers}
    assert by["f4-pythia160m-loss"].expected() == "≥0" and by["f4-pythia160m-loss"].bits == [3]
    assert {"F1", "F2", "F3", "F4", "wd", "formats"} <= {n.finding for n in numbers}


def test_the_data_file_ships_as_package_data():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"workflows/reproduction/paper_numbers.yaml"' in text


@pytest.mark.parametrize("edit, words", [
    ("source: []", ["entry 1 ('bad')", "source"]),
    ('value: "up"', ["entry 1 ('bad')", "value", "a direction is one of"]),
    ("value: [2, 1]", ["entry 1 ('bad')", "low ≤ high"]),
    ("claim: jump", ["entry 1 ('bad')", "claim 'jump' is none of qrobust's"]),
    ("finding: F9", ["entry 1 ('bad')", "finding"]),
    ("colour: red", ["unknown key 'colour'"]),
])
def test_a_bad_entry_is_one_line(edit, words):
    key = edit.split(":")[0]
    lines = [ln for ln in ENTRY.format(id="bad", bits="[3]", value='"+"', claim="cooldown_vs_constant").splitlines()
             if not ln.startswith(f"  {key}:") and not (key == "source" and ln.startswith("    - {"))]
    text = "\n".join(lines + [f"  {edit}"])
    with pytest.raises(ConfigError) as e:
        paper.load_paper_numbers(text, "test file")
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_bad_file_is_one_line(tmp_path):
    for text, words in [("{id: x}", "non-empty list"), ("[]", "non-empty list"), ("- [1, 2", "not valid YAML")]:
        with pytest.raises(ConfigError, match=words):
            paper.load_paper_numbers(text, "test file")
    two = ENTRY.format(id="same", bits="[3]", value='"+"', claim="cooldown_vs_constant")
    with pytest.raises(ConfigError, match="id 'same' is given to two entries"):
        paper.load_paper_numbers(two + two, "test file")
    with pytest.raises(ConfigError, match="paper numbers file not found"):
        paper.paper_numbers(tmp_path / "none.yaml")
    (tmp_path / "p.yaml").write_text(two)
    assert [n.id for n in paper.paper_numbers(tmp_path / "p.yaml")] == ["same"]


# -- pairing with a verdict ---------------------------------------------------------------------------------------
def test_rows_pair_claims_by_bits_and_derive_direction_and_relative_size():
    numbers = _numbers({"id": "up"}, {"id": "down", "value": '"−"', "bits": "[3]"}, {"id": "none", "claim": '""'})
    result = {"experiment": "f2", "scale": 1.0, "claims": [
        # 3 bits: both point up, one resolved -> yes; jumps 0.002/0.004 = 50 % and 0.001/0.004 = 25 % of B's ΔQ L
        _claim("gptq-w3g128", [_comp(0.002, 0.001, 0.003, dq_b=0.004), _comp(0.001, -0.0005, 0.0025, dq_b=0.004)]),
        # 4 bits: one resolved up, one resolved down -> unclear; 0.003/0.002 = 150 %, -0.001/0.002 = -50 %
        _claim("gptq-w4g128", [_comp(0.003, 0.001, 0.005, dq_b=0.002), _comp(-0.001, -0.002, -0.0005, dq_b=0.002)]),
        _claim("gptq-w2g128", [_comp(0.01, 0.005, 0.02, dq_b=0.01)]),  # 2 bits: not the paper's, never paired
        _claim("gptq-w3g128", [_comp(0.5, 0.4, 0.6)], text="something else entirely")]}
    rows = paper.paper_rows(result, numbers)
    assert [(r["id"], r["cell"], r["same_direction"]) for r in rows] == [
        ("up", "gptq-w3g128", "yes"), ("up", "gptq-w4g128", "unclear"),
        ("down", "gptq-w3g128", "no"),  # the paper would say "−": ours is resolved "+"
        ("none", "–", "not measured")]
    assert rows[0]["relative"] == pytest.approx([0.5, 0.25])
    assert rows[0]["relative_text"] == "median +38 % (from +25 to +50 %) of main's ΔQ L"
    assert rows[1]["relative"] == pytest.approx([1.5, -0.5])
    assert rows[0]["diffs"] == [[0.002, 0.001, 0.003], [0.001, -0.0005, 0.0025]]
    assert rows[0]["ours"] == "+0.200 [+0.100, +0.300] points; +0.100 [-0.050, +0.250] points"
    assert rows[0]["paper"] == "+" and rows[3]["ours"] == paper.NOT_MEASURED
    assert paper.paper_rows({**result, "experiment": "f3"}, numbers) == []  # no entry for another experiment


def test_agreement_rules():
    up, down, zero = _comp(1, .5, 2), _comp(-1, -2, -.5), _comp(.1, -1, 1)
    a = paper.agreement
    assert a("+", [up, zero]) == "yes" and a("+", [down, zero]) == "no" and a("+", [up, down]) == "unclear"
    assert a("+", [zero, zero]) == "unclear" and a("+", []) == "unclear" and a(None, [up]) == "unclear"
    assert a("−", [down]) == "yes" and a("−", [up]) == "no"
    assert a("≥0", [zero, zero]) == "yes" and a("≥0", [down, zero]) == "no" and a("≥0", [down, up]) == "unclear"


def test_numbers_and_ranges_give_their_sign():
    n = _numbers({"id": "num", "value": "0.5"}, {"id": "rng", "value": "[-1, 2]"}, {"id": "neg", "value": "[-3, -1]"})
    assert [x.expected() for x in n] == ["+", None, "−"]
    assert n[0].value_text() == "0.5 ΔQ L" and n[1].value_text() == "-1 to 2 ΔQ L"


def test_keyed_claims_and_cell_patterns_match():
    (e,) = paper.load_paper_numbers(ENTRY.format(id="k", bits="[]", value='"+"', claim="constant_vs_lawa")
                                    + '  cells: "^rtn-"\n', "test file")
    keyed = {"cell": "rtn-w4g128", "claim": "any words", "key": "constant_vs_lawa", "comparisons": []}
    assert paper.matches(e, keyed)  # by key; bits [] -> the paper's 3 and 4
    assert not paper.matches(e, {**keyed, "cell": "gptq-w4g128"})  # the pattern names RTN
    assert not paper.matches(e, {**keyed, "cell": "rtn-w2g128"}) and not paper.matches(e, {**keyed, "cell": "rtn-nvfp4"})
    assert paper.matches(e, {**keyed, "key": None, "claim": "ΔQ L of main-lawa5 is below the constant-LR run's at the same step"})
    assert [paper.bits_of(c) for c in ("gptq-w3g128", "rtn-w8ch+a-int8-token", "rtn-mxfp4")] == [3, 8, None]


def test_lawa_comparisons_use_their_own_dq_names():
    comps = [{"diff": 0.001, "low": 0, "high": 0.002, "dq_main": 0.004, "dq_lawa": 0.003},
             {"diff": -0.01, "low": -0.02, "high": 0.0, "unit": "nats", "dq_main": 0.004}]
    assert paper.relative_sizes(comps, "a") == pytest.approx([0.25])  # 0.001 / 0.004; nats have no relative size
    assert paper.relative_sizes(comps, "b") == pytest.approx([1 / 3])
    assert paper.relative_sizes(comps, None) == []
    # a base ΔQ L ≤ 0 (the quantized model was no worse) gives no ratio: 4-bit GPTQ at step 1200 of the README's run
    assert paper.relative_sizes([_comp(0.00113, 0.00057, 0.00175, dq_b=-0.00046), _comp(0.1, 0, 1, dq_b=0.0)], "b") == []


# -- output ------------------------------------------------------------------------------------------------------
def _result():
    comps = [_comp(0.002, 0.001, 0.003, dq_b=0.004, paired=True, **{"for": True, "against": False},
                   what="cooldown from step 10 vs constant LR at step 20")]
    claim = {**_claim("gptq-w3g128", comps), "kind": "greater", "n": 1, "n_expected_direction": 1, "n_for": 1,
             "n_against": 0}
    run = {"train_config": {"out": "r", "seed": 0, "steps": 1600, "batch_size": 16, "model": {"preset": "tiny"},
                            "data": {"seq_len": 128, "seed": 0}}, "sweep_config": {"out": "s"}, "report": "rep.html"}
    return {"experiment": "f2", "finding": "F2", "scale": 1.0, "model": None, "train_s": 1.0, "sweep_s": 1.0,
            "created": "now", "summary": "s", "claims": [claim], "runs": {"constant-cooldowns": run},
            "spec_yaml": "name: f2", "versions": {}}


def test_the_page_shows_the_section_and_paper_json_is_written(tmp_path):
    result = _result()
    page = render(result, [], [], {}, tmp_path)
    assert "The paper's numbers beside ours" in page and page.index("paper-table") > page.index('class="claim"')
    assert "Ours: tiny preset, ≤ 3.3 M tokens." in page  # 1600 steps × 16 × 128
    assert "Learning rate decay triggers quantization error mostly independent of the number of training tokens" in page
    assert page.count('class="paper-row"') == len(paper.paper_rows(result)) >= 3  # 160M, SmolLM3, OLMo2 at 3 bits
    path = paper.write_paper(result, tmp_path)
    rows = json.loads(path.read_text())
    assert rows == json.loads(json.dumps(paper.paper_rows(result)))
    assert {r["same_direction"] for r in rows} == {"yes"}
    assert paper.write_paper({**result, "experiment": "nothing-stated"}, tmp_path / "x") is None
    assert paper.paper_html({**result, "experiment": "nothing-stated"}) == ""


def test_markdown_table_for_the_readme():
    md = paper.paper_markdown([_result()])
    lines = md.strip().splitlines()
    assert lines[0].startswith("| experiment | paper: model, bits |") and len(lines) == 2 + len(paper.paper_rows(_result()))
    assert "| f2 | Pythia-160M (the paper's own runs), 3/4 |" in md and "| yes |" in md


def test_scaling_claims_pair_with_the_shipped_entries():
    """The scaling experiment's claims (keys cooldown_equal_dn, fit_per_size / fit_pooled) meet the paper's
    "independent of data scale" statements; held-out error tokens − schedule > 0 is the paper's side."""
    fit_text = "the decay term predicts held-out cooldowns better than tokens per parameter alone (pooled over sizes)"
    result = {"experiment": "scaling", "claims": [
        _claim("gptq-w3g32 @ micro", [_comp(0.001, 0.0002, 0.002, dq_b=0.002)], key="cooldown_equal_dn",
               text="ΔQ L at the end of a cooldown is above the constant-LR run's at the same D/N"),
        _claim("gptq-w3g32", [_comp(-0.0001, -0.0003, -0.00005)], key="fit_pooled", text=fit_text)]}
    rows = {r["id"]: r for r in paper.paper_rows(result)}
    assert rows["scaling-decay"]["same_direction"] == "yes" and rows["scaling-decay"]["relative"] == [0.5]
    assert rows["scaling-form"]["same_direction"] == "no" and rows["scaling-form"]["relative_text"] == "–"
