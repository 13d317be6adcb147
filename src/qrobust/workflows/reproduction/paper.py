"""The paper's own statements beside qrobust's measurements.

``paper_numbers.yaml`` (package data) holds every quantitative statement of arXiv 2510.06213 that its public
sources let us quote, each with its source. The paper works at 160 M parameters and 10–100 B tokens (and open
models up to 32 B), qrobust at ~1 M parameters and a few M tokens, so absolute ΔQ L values cannot be compared:
a row sets the paper's *direction* (and, where it says one, its size in words) beside our difference with its
95 % interval, whether the two point the same way, and our difference relative to a ΔQ L of the comparison.
Rows go on the experiment's page and into ``OUT/<name>/paper.json``; ``verdict.json`` keeps its shape.
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
from pydantic import Field, field_validator, model_validator

from ...config import Strict, parse_config, parse_yaml
from ...errors import ConfigError
from ...io.atomic import write_text
from ...reporting.html import esc
from .claims import fmt_diff

DIRECTIONS = ("+", "−", "≥0")  # the sign of the quantity; "≥0": "matches or beats" (not below zero)
# claim key -> its text, for verdict files whose claims carry no key (F2's, F3's, F4's, weight decay's)
CLAIM_TEXT = {"cooldown_vs_constant": r"end of a cooldown is above the constant-LR run",
              "loss_vs_cooldown": r"^quantized loss of .+ matches or beats the cooldown",
              "constant_vs_lawa": r"^ΔQ L of .+ is below the constant-LR run",
              "cooldown_vs_lawa": r"^ΔQ L of .+ is below the cooldown",
              "equal_fp_loss": r"at equal FP loss is lower for",
              "cooldown_equal_dn": r"cooldown is above the constant-LR run's at the same D/N",
              "schedule_vs_tokens_fit": r"decay term predicts held-out .+ better than tokens per parameter"}
PAPER_BITS = (3, 4)  # the paper quantizes to 3 and 4 bits throughout
DQ_KEYS = {"a": ("dq_a", "dq_decay", "dq_main"), "b": ("dq_b", "dq_control", "dq_lawa")}
AGREE_COLOUR = {"yes": "#e6f4ea", "no": "#fde8e8", "unclear": "#fff4e5", "not measured": "#eeeeee"}
NOT_MEASURED = "not measured by this experiment"


class Source(Strict):
    """Where a statement stands, and its exact words."""
    document: str = Field(min_length=1)
    where: str = Field(min_length=1)
    quote: str = Field(min_length=1)


class PaperNumber(Strict):
    """One statement of the paper: a quantity (its sign is ``value``), the setting and the source."""
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    finding: Literal["F1", "F2", "F3", "F4", "wd", "formats"]
    experiment: list[str] = Field(min_length=1)
    model: str = Field(min_length=1)
    bits: list[int] = Field(default_factory=list)
    quantity: str = Field(min_length=1)
    value: Union[float, tuple[float, float], str]
    unit: str = Field(min_length=1)
    claim: str
    cells: str | None = None
    relative: Literal["a", "b"] | None = None
    size: str = ""
    conditions: str = ""
    source: list[Source] = Field(min_length=1)
    approximate: bool

    @field_validator("experiment", "bits", mode="before")
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, int)) else v

    @field_validator("value")
    @classmethod
    def _value(cls, v: Any) -> Any:
        if isinstance(v, str) and v.replace("-", "−") not in DIRECTIONS:
            raise ValueError(f"a direction is one of {', '.join(DIRECTIONS)}, a number or [low, high]")
        if isinstance(v, tuple) and v[0] > v[1]:
            raise ValueError("a range is [low, high] with low ≤ high")
        return v.replace("-", "−") if isinstance(v, str) else v

    @model_validator(mode="after")
    def _known(self) -> "PaperNumber":
        if self.claim and self.claim not in CLAIM_TEXT:
            raise ValueError(f"claim '{self.claim}' is none of qrobust's ({', '.join(CLAIM_TEXT)}, or \"\")")
        if self.cells is not None:
            try:
                re.compile(self.cells)
            except re.error as e:
                raise ValueError(f"cells is not a regular expression: {e}") from None
        return self

    def expected(self) -> str | None:
        """The sign the paper gives the quantity: '+', '−', '≥0', or None (a range across zero)."""
        v = self.value
        if isinstance(v, str):
            return v
        lo, hi = v if isinstance(v, tuple) else (v, v)
        return "+" if lo > 0 else "−" if hi < 0 else None

    def value_text(self) -> str:
        v = self.value
        s = v if isinstance(v, str) else f"{v[0]:g} to {v[1]:g}" if isinstance(v, tuple) else f"{v:g}"
        return s + ("" if isinstance(v, str) else f" {self.unit}") + (" (read from a figure)" if self.approximate else "")

    def cite(self) -> str:
        return " | ".join(f'{s.document}, {s.where}: "{s.quote}"' for s in self.source)


def load_paper_numbers(text: str, what: str = "paper numbers") -> list[PaperNumber]:
    """The entries of a paper-numbers file; a bad file is one ConfigError line naming the entry and key."""
    data = parse_yaml(text, what)
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{what} must be a non-empty list of entries (id, finding, experiment, ..., source)")
    out: list[PaperNumber] = []
    for i, d in enumerate(data, 1):
        name = f"{what}, entry {i}" + (f" ('{d['id']}')" if isinstance(d, dict) and "id" in d else "")
        out.append(parse_config(PaperNumber, d, name))
    seen: set[str] = set()
    for e in out:
        if e.id in seen:
            raise ConfigError(f"{what}: id '{e.id}' is given to two entries; ids must be unique")
        seen.add(e.id)
    return out


def paper_numbers(path: str | Path | None = None) -> list[PaperNumber]:
    """The shipped ``paper_numbers.yaml`` (or the file at ``path``), validated."""
    if path is None:
        f = resources.files("qrobust.workflows.reproduction").joinpath("paper_numbers.yaml")
        return load_paper_numbers(f.read_text(encoding="utf-8"), "paper_numbers.yaml (package data)")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"paper numbers file not found: {p}")
    return load_paper_numbers(p.read_text(encoding="utf-8"), f"paper numbers file {p}")


# -- pairing with a verdict ---------------------------------------------------------------------------------
def bits_of(cell: str) -> int | None:
    """The weight bits in a variant label (``gptq-w3g128`` -> 3); None for a float format (``rtn-nvfp4``)."""
    m = re.search(r"(?:^|-)w(\d+)", cell)
    return int(m.group(1)) if m else None


def matches(entry: PaperNumber, claim: dict[str, Any]) -> bool:
    """Does this claim of ours measure the entry's quantity: same claim (key, or its text), same bits (the
    paper's 3 and 4 when the source names none) and, if the entry has one, its ``cells`` pattern?"""
    if not entry.claim or not (claim.get("key") == entry.claim or re.search(CLAIM_TEXT[entry.claim], claim["claim"])):
        return False
    cell = str(claim["cell"])
    if entry.cells is not None and re.search(entry.cells, cell) is None:
        return False
    return bits_of(cell) in (entry.bits or PAPER_BITS)


def agreement(expected: str | None, comps: list[dict[str, Any]]) -> str:
    """'yes' when some comparison is resolved (95 % interval excludes 0) the paper's way and none against;
    'no' when some are against and none for; 'unclear' otherwise. For '≥0' ("matches or beats"): 'yes' when
    none is resolved below 0, 'no' when some are and none above."""
    if expected is None or not comps:
        return "unclear"
    up, down = sum(k["low"] > 0 for k in comps), sum(k["high"] < 0 for k in comps)
    if expected == "≥0":
        return "yes" if down == 0 else "no" if up == 0 else "unclear"
    agree, disagree = (up, down) if expected == "+" else (down, up)
    return "yes" if agree and not disagree else "no" if disagree and not agree else "unclear"


def relative_sizes(comps: list[dict[str, Any]], side: str | None) -> list[float]:
    """Each difference as a fraction of side A's or B's ΔQ L (the comparison's own numbers). None for nats,
    nor where that ΔQ L is ≤ 0 (quantization did not hurt: a ratio to it says nothing)."""
    if side is None:
        return []
    out = []
    for k in comps:
        base = next((k[n] for n in DQ_KEYS[side] if isinstance(k.get(n), (int, float))), None)
        if k.get("unit") != "nats" and base is not None and base > 0:
            out.append(k["diff"] / base)
    return out


def _relative_text(rel: list[float], side: str | None, comps: list[dict[str, Any]]) -> str:
    if not rel or side is None:
        return "–"
    who = comps[0].get(side, side.upper())
    if len(rel) == 1:
        return f"{100 * rel[0]:+.0f} % of {who}'s ΔQ L"
    return (f"median {100 * float(np.median(rel)):+.0f} % (from {100 * min(rel):+.0f} to {100 * max(rel):+.0f} %) "
            f"of {who}'s ΔQ L")


def our_scale(result: dict[str, Any]) -> str:
    """The model preset(s) and the longest run's token count of this experiment."""
    presets, tokens = set(), 0
    for r in (result.get("runs") or {}).values():
        t = r.get("train_config") or {}
        presets.add(str((t.get("model") or {}).get("preset", "?")))
        tokens = max(tokens, int(t.get("steps", 0)) * int(t.get("batch_size", 0)) * int((t.get("data") or {}).get("seq_len", 0)))
    where = (", ".join(sorted(presets)) + " preset") if presets else f"scale {result.get('scale', '?')}"
    return where + (f", ≤ {tokens / 1e6:.1f} M tokens" if tokens else "")


def _row(entry: PaperNumber, claim: dict[str, Any] | None, scale: str) -> dict[str, Any]:
    comps = (claim or {}).get("comparisons") or []
    rel = relative_sizes(comps, entry.relative)
    row = {"id": entry.id, "finding": entry.finding, "paper_model": entry.model,
           "paper_bits": entry.bits, "quantity": entry.quantity, "paper": entry.value_text(), "paper_size": entry.size,
           "conditions": entry.conditions, "source": entry.cite(), "approximate": entry.approximate,
           "scale": f"paper: {entry.model}; ours: {scale}"}
    if claim is None:
        return {**row, "cell": "–", "claim": "", "status": "", "ours": NOT_MEASURED, "diffs": [], "relative": [],
                "relative_text": "–", "same_direction": "not measured"}
    return {**row, "cell": claim["cell"], "claim": claim["claim"], "status": claim.get("status", ""),
            "ours": "; ".join(fmt_diff(k) for k in comps) or "no comparison",
            "diffs": [[float(k[n]) for n in ("diff", "low", "high")] for k in comps], "relative": [float(x) for x in rel],
            "relative_text": _relative_text(rel, entry.relative, comps),
            "same_direction": agreement(entry.expected(), comps)}


def paper_rows(result: dict[str, Any], numbers: list[PaperNumber] | None = None) -> list[dict[str, Any]]:
    """Per paper entry of this experiment, one row per claim of ours that measures it (one row saying
    'not measured' when none does)."""
    numbers = paper_numbers() if numbers is None else numbers
    scale, rows = our_scale(result), []
    for e in (e for e in numbers if result["experiment"] in e.experiment):
        found = [c for c in result.get("claims") or [] if matches(e, c)]
        rows += [_row(e, c, scale) for c in found] or [_row(e, None, scale)]
    return rows


# -- output -------------------------------------------------------------------------------------------------
def paper_html(result: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    """The page section "The paper's numbers beside ours" ('' when the paper states nothing for it)."""
    rows = paper_rows(result) if rows is None else rows
    if not rows:
        return ""
    head = "".join(f'<th class="l">{h}</th>' for h in (
        "paper: model, bits", "the paper says", "our variant", "ours: A − B [95 %]", "relative size (ours)",
        "same direction?", "source"))
    body = "".join(
        f'<tr class="paper-row"><td class="l">{esc(r["paper_model"])}, '
        f'{esc("/".join(map(str, r["paper_bits"])) or "bits not stated")}</td>'
        f'<td class="l">{esc(r["quantity"])}: <b>{esc(r["paper"])}</b>'
        f'{esc(" — " + r["paper_size"]) if r["paper_size"] else ""}</td>'
        f'<td class="l">{esc(r["cell"])}{esc(" (" + r["status"] + ")") if r["status"] else ""}</td>'
        f'<td class="l">{esc(r["ours"])}</td><td class="l">{esc(r["relative_text"])}</td>'
        f'<td class="l" style="background:{AGREE_COLOUR[r["same_direction"]]}"><b>{esc(r["same_direction"])}</b></td>'
        f'<td class="l">{esc(r["source"])}</td></tr>' for r in rows)
    return ("<h2 id=\"paper\">The paper's numbers beside ours</h2>"
            f"<p class=\"meta\">Ours: {esc(our_scale(result))}. The paper's "
            "runs are 160 M parameters on 10–100 B tokens (open models up to 32 B parameters and 15 T tokens), so "
            "absolute ΔQ L values are not comparable: each row compares the direction of a difference and its "
            "size relative to a ΔQ L of the same comparison. The public sources give directions; no value is "
            "read off a figure. <i>Same direction?</i> is yes when some comparison of ours is resolved the "
            "paper's way and none against (for \"≥0\": none resolved below 0).</p>"
            f"<div class=\"scroll\"><table id=\"paper-table\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            "</table></div>")


def paper_markdown(results: list[dict[str, Any]]) -> str:
    """Every experiment's rows as one Markdown table (for the README)."""
    lines = ["| experiment | paper: model, bits | the paper says | ours (variant, verdict) | A − B, 95 % | "
             "relative size | same direction? |", "|---|---|---|---|---|---|---|"]
    for result in results:
        for r in paper_rows(result):
            bits = "/".join(map(str, r["paper_bits"])) or "bits not stated"
            verdict = f" ({r['status']})" if r["status"] else ""
            lines.append(f"| {result['experiment']} | {r['paper_model']}, {bits} | {r['quantity']}: **{r['paper']}** | "
                         f"{r['cell']}{verdict} | {r['ours']} | {r['relative_text']} | {r['same_direction']} |")
    return "\n".join(lines) + "\n"


def write_paper(result: dict[str, Any], exp_dir: Path) -> Path | None:
    """``OUT/<name>/paper.json``: the rows, when the paper states something this experiment measures."""
    rows = paper_rows(result)
    if not rows:
        return None
    path = Path(exp_dir) / "paper.json"
    write_text(path, json.dumps(rows, indent=1, ensure_ascii=False, default=str))
    return path
