"""Verdict kinds as a registry: a kind turns the records of an experiment's runs into claims (see
:mod:`.claims` for the rules) and draws its figures. An experiment names its kind (``verdict: cooldown``);
adding one is one function and one ``@register_verdict("name")``, never an edit to a chain of ``if``s.

Built in: ``cooldown`` (F2: every cooldown's end vs the constant-LR run at the same step), ``averaging``
(F4: LAWA vs decay and vs the constant-LR run), ``equal_fp_loss`` (F3 / weight decay: ΔQ L where the runs
reach the same FP loss), ``formats`` (F2 and F4 together, one table row per number format × method).
A kind may also lay its claims out as one table (``table``), shown above the claims on the page.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ...registries import Registry
from ...errors import ConfigError, QrobustError
from ...results.compare import compare_dq, compare_dq_at_fp_loss, compare_loss
from ...results.records import VariantRecord
from ..comparisons import stable_vs_decay
from .claims import Records, Stores, by_variant, claim, comparison, fmt_diff, judge
from .figures import Figures, equal_fp_loss_figures, formats_figures, per_run_figures
from .formats import check_formats, formats_table

# (spec, stores) -> claims; spec is the experiment's ReproduceSpec (name, runs, order, levels, ...)
ClaimsFn = Callable[[Any, Stores], list[dict[str, Any]]]
CheckFn = Callable[[Any, str], None]
TableFn = Callable[[Any, list[dict[str, Any]]], dict[str, Any]]


def _no_check(spec: Any, what: str) -> None:
    """A kind without settings of its own accepts every experiment."""


@dataclass(frozen=True)
class VerdictKind:
    """One kind of verdict: its claims from the records, its figures, its check of the experiment file,
    and optionally a summary table of its claims (``{"columns": [...], "rows": [[...]]}``)."""
    claims: ClaimsFn
    figures: Figures
    check: CheckFn = _no_check
    table: TableFn | None = None

    def claims_per_seed(self, spec: Any, stores_by_seed: list[Stores]) -> list[list[dict[str, Any]]]:
        """Each seed's claims. A kind whose claims take ``peers`` (the other seeds' stores) sees them, so it
        can choose settings common to all seeds (equal_fp_loss: the same FP-loss levels)."""
        import inspect
        takes_peers = "peers" in inspect.signature(self.claims).parameters
        if len(stores_by_seed) == 1 or not takes_peers:
            return [self.claims(spec, s) for s in stores_by_seed]
        return [self.claims(spec, s, peers=[p for p in stores_by_seed if p is not s])  # type: ignore[call-arg]
                for s in stores_by_seed]


VERDICTS: Registry[VerdictKind] = Registry("verdict")


def register_verdict(name: str, figures: Figures | None = None, check: CheckFn | None = None,
                     table: TableFn | None = None) -> Callable[[ClaimsFn], ClaimsFn]:
    """Register ``fn(spec, stores) -> claims`` as verdict kind ``name`` (figures: the per-run dq/loss plots
    unless given; ``check(spec, what)`` refuses an experiment file the kind cannot judge; ``table(spec,
    claims)`` lays the claims out as one table)."""
    return VERDICTS.register(name, lambda fn: VerdictKind(fn, figures or per_run_figures({"dq", "loss"}),  # type: ignore
                                                           check or _no_check, table))


def get_verdict(name: str) -> VerdictKind:
    return VERDICTS.lookup(name)


# -- F2: cooldowns vs the constant-LR control -------------------------------------------------------------
def _branches(runs_meta: dict[str, dict[str, Any]]) -> list[str]:
    return [n for n, m in runs_meta.items() if m.get("parent") == "main" and m.get("from_step") is not None
            and not m.get("averaged")]


def _at(recs: Records, run: str) -> dict[int, VariantRecord]:
    return {r.checkpoint.step: r for r in recs if r.checkpoint.run == run}


def cooldown(stores: Stores) -> list[dict[str, Any]]:
    """Per variant: ΔQ L at the end of every cooldown vs the constant-LR run at the same step (the pairs
    the demo's summary makes, averaged runs left out)."""
    claims = []
    for run_label, (records, runs_meta) in stores.items():
        keep = set(_branches(runs_meta)) | {"main"}
        for cell, recs in by_variant(records).items():
            rows = stable_vs_decay([r for r in recs if r.checkpoint.run in keep], samples=True)
            comps = [comparison(f"cooldown from step {row['from_step']} vs constant LR at step {row['step']}",
                                 row["branch"], "main", row["decay_vs_control"], step=row["step"],
                                 from_step=row["from_step"], dq_a=row["dq_decay"], dq_b=row["dq_control"],
                                 loss_fp_a=row["loss_fp_decay"], loss_fp_b=row["loss_fp_control"])
                     for row in sorted(rows, key=lambda row: row["from_step"]) if row["decay_vs_control"]]
            claims.append({**claim("ΔQ L at the end of a cooldown is above the constant-LR run's at the same step",
                                   "greater", cell, comps), "key": "cooldown_vs_constant"})
    return claims


# -- F4: LAWA vs decay and vs the constant-LR run -----------------------------------------------------------
def averaging(stores: Stores) -> list[dict[str, Any]]:
    """Per variant, at every cooldown endpoint: LAWA of the constant-LR run vs the cooldown and vs the
    constant-LR checkpoint at the same step."""
    claims = []
    for run_label, (records, runs_meta) in stores.items():
        lawa = [n for n, m in runs_meta.items() if (m.get("averaged") or {}).get("averager") == "lawa"
                and m.get("parent") == "main"]
        if not lawa:
            raise QrobustError(f"run '{run_label}' has no LAWA of its constant-LR run in its results; "
                               "the experiment's sweep needs an 'average: [{averager: lawa, runs: [main]}]' entry")
        avg = lawa[0]
        for cell, recs in by_variant(records).items():
            main, av = _at(recs, "main"), _at(recs, avg)
            loss_c, dq_decay, dq_main = [], [], []
            for br in sorted(_branches(runs_meta), key=lambda n: runs_meta[n]["from_step"]):
                mine = _at(recs, br)
                if not mine or max(mine) not in av:
                    continue
                s = max(mine)
                d, a = mine[s], av[s]
                info = {"step": s, "from_step": runs_meta[br]["from_step"],
                        "loss_q_decay": d.metrics.loss_q, "loss_q_lawa": a.metrics.loss_q,
                        "loss_fp_decay": d.metrics.loss_fp, "loss_fp_lawa": a.metrics.loss_fp,
                        "dq_decay": d.metrics.dq_rel, "dq_lawa": a.metrics.dq_rel}
                loss_c.append(comparison(f"quantized loss, cooldown from {info['from_step']} − {avg}, step {s}",
                                          br, avg, compare_loss(d, a, "q", samples=True), unit="nats", **info))
                dq_decay.append(comparison(f"ΔQ L, cooldown from {info['from_step']} − {avg}, step {s}",
                                            br, avg, compare_dq(d, a, samples=True), **info))
                if s in main:
                    c = main[s]
                    dq_main.append(comparison(f"ΔQ L, constant LR − {avg}, step {s}", "main", avg, compare_dq(c, a, samples=True),
                                               step=s, dq_main=c.metrics.dq_rel, dq_lawa=a.metrics.dq_rel,
                                               loss_fp_main=c.metrics.loss_fp, loss_fp_lawa=a.metrics.loss_fp))
            claims.append({**claim(f"quantized loss of {avg} matches or beats the cooldown ending at the same step",
                                   "not_worse", cell, loss_c), "key": "loss_vs_cooldown"})
            claims.append({**claim(f"ΔQ L of {avg} is below the constant-LR run's at the same step",
                                   "greater", cell, dq_main), "key": "constant_vs_lawa"})
            claims.append({**claim(f"ΔQ L of {avg} is below the cooldown's ending at the same step",
                                   "greater", cell, dq_decay), "key": "cooldown_vs_lawa"})
    return claims


# -- F3 / weight decay: ΔQ L at equal FP loss -------------------------------------------------------------
def fp_levels(a: Records, b: Records, n: int, *more: Records) -> list[float]:
    """``n`` FP-loss levels both runs (and every run in ``more``: the same runs' other seeds) pass through:
    evenly spaced over the lower half of the overlap of their FP-loss ranges (the upper half is the first
    rapid phase, where ΔQ L is ≈ 0 for every run)."""
    losses = [[r.metrics.loss_fp for r in run] for run in (a, b, *more)]
    lo, hi = max(min(x) for x in losses), min(max(x) for x in losses)
    if hi <= lo:
        return []
    top = lo + (hi - lo) / 2
    return [lo + (top - lo) * (k + 0.5) / n for k in range(n)]


def _main_run(stores: Stores, label: str, cell: str) -> Records:
    """One variant's records of a run's main trajectory, in step order."""
    recs = by_variant(stores[label][0]).get(cell, [])
    return sorted((r for r in recs if r.checkpoint.run == "main"), key=lambda r: r.checkpoint.step)


def equal_fp_loss(stores: Stores, order: list[str], n_levels: int, label_of: Callable[[str], str] = str,
                  peers: list[Stores] = ()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    """Per variant and pair of neighbouring runs in ``order`` (expected: ΔQ L falls along it): ΔQ L of both
    where their main runs reach the same FP loss. One claim per pair, so a finding that holds up to some
    learning rate and breaks beyond it says so. ``peers``: the other seeds' stores, so every seed is compared
    at the same FP-loss levels (their common overlap) and the comparisons pool."""
    per_run = {lbl: by_variant(stores[lbl][0]) for lbl in order}
    cells = sorted(set.intersection(*(set(v) for v in per_run.values())))
    claims = []
    for cell in cells:
        for x, y in zip(order, order[1:]):
            a, b = _main_run(stores, x, cell), _main_run(stores, y, cell)
            others = [_main_run(p, lbl, cell) for p in peers for lbl in (x, y)]
            comps = []
            for level in fp_levels(a, b, n_levels, *[o for o in others if o]):
                res = compare_dq_at_fp_loss(a, b, level, samples=True)
                comps.append(comparison(f"ΔQ L at FP loss {level:.3f}: {x} − {y}", x, y, res, level=level,
                                         dq_a=res["dq_a"], dq_b=res["dq_b"], at_a=res["at_a"], at_b=res["at_b"]))
            claims.append(claim(f"ΔQ L at equal FP loss is lower for {label_of(y)} than for {label_of(x)}",
                                "greater", cell, comps))
    return claims


# -- the built-in kinds -------------------------------------------------------------------------------------
def untagged(claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claims without the ``key`` tag the formats table reads: F2's and F4's own verdict files keep the
    shape they had before formats existed."""
    return [{k: v for k, v in c.items() if k != "key"} for c in claims]


@register_verdict("cooldown", figures=per_run_figures({"dq", "loss", "stable_vs_decay"}))
def cooldown_verdict(spec: Any, stores: Stores) -> list[dict[str, Any]]:
    return untagged(cooldown(stores))


@register_verdict("averaging", figures=per_run_figures({"averaging"}, keep_averaged=True))
def averaging_verdict(spec: Any, stores: Stores) -> list[dict[str, Any]]:
    return untagged(averaging(stores))


def check_order(spec: Any, what: str) -> None:
    """``equal_fp_loss`` compares neighbouring runs of ``order``: it must name at least two of the runs."""
    order = spec.order or []
    if len(order) < 2 or set(order) - set(spec.runs):
        raise ConfigError(f"{what}: 'order' must name at least two of its runs ({', '.join(spec.runs)})")


@register_verdict("equal_fp_loss", figures=equal_fp_loss_figures, check=check_order)
def equal_fp_loss_verdict(spec: Any, stores: Stores, peers: list[Stores] = ()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    return equal_fp_loss(stores, spec.order or list(spec.runs), spec.levels, peers=peers)


@register_verdict("formats", figures=formats_figures, check=check_formats, table=formats_table)
def formats_verdict(spec: Any, stores: Stores) -> list[dict[str, Any]]:
    """F2 and F4 for every format × method of the sweep (the table: :mod:`.formats`)."""
    return cooldown(stores) + averaging(stores)


__all__ = ["VERDICTS", "VerdictKind", "averaging", "by_variant", "claim", "comparison", "cooldown", "equal_fp_loss",
           "fmt_diff", "fp_levels", "get_verdict", "judge", "register_verdict"]
