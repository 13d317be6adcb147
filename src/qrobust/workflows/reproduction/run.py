"""``qrobust reproduce``: train an experiment's runs, sweep each, compute the verdict from the records,
draw the figures and write one HTML page per experiment. Every stage resumes: finished training steps,
records and averaged checkpoints are never redone, so a killed run picks up where it stopped."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ...config import SweepConfig, TrainConfig
from ...errors import ConfigError
from ...results.store import Store, versions
from ...io.atomic import write_text
from .. import steps
from . import verdicts
from .page import write_page, write_index
from .paper import write_paper
from .claims import Stores
from .formats import table_markdown
from .jobs import Unit, add_units, run_units
from .seeds import pool_claims, signs
from .seeds_figure import seeds_figures
from .summary import write_summary
from .spec import ReproduceSpec, builtin_names, load_spec, resolve_runs, resolve_sweep


def _stores(sweeps: dict[str, Any]) -> tuple[Stores, dict[str, dict[str, Any]]]:
    """Per run label: (its records, its runs' metadata), and its stored trajectory; each read once. Only the
    variants of this experiment's sweep: experiments that share a run share its results folder (F2, F4 and
    formats), and F2's verdict must not change once formats has added its records there."""
    from ...sweeps.prepare import variants
    out, trajs = {}, {}
    for label, sc in sweeps.items():
        store = Store(sc.out, create=False)
        trajs[label] = store.trajectories().get(label) or {}
        mine = {s.label for s in variants(sc)}
        recs = [r for r in store.records() if r.trajectory == label and str(r.variant.label) in mine]
        out[label] = (recs, trajs[label].get("runs") or {})
    return out, trajs


def summary_line(spec: ReproduceSpec, claims: list[dict[str, Any]]) -> str:
    """One sentence per claim: which variants reproduce, partly reproduce, or do not."""
    parts = []
    for text in dict.fromkeys(c["claim"] for c in claims):
        by: dict[str, list[str]] = {}
        for c in claims:
            if c["claim"] == text:
                by.setdefault(c["status"], []).append(c["cell"])
        said = "; ".join(f"{status}: {', '.join(cells)}" for status, cells in by.items())
        parts.append(f"{text} — {said}")
    return f"{spec.name}: " + " | ".join(parts)


def format_claims(claims: list[dict[str, Any]]) -> str:
    lines = []
    for c in claims:
        lines.append(f"  [{c['status']}] {c['cell']}: {c['claim']} — {c['n_expected_direction']}/{c['n']} in the "
                     f"expected direction, {c['n_for']} resolved for, {c['n_against']} against")
        for k in c["comparisons"]:
            per_seed = f"  seeds {signs(k)}" if k.get("seeds") else ""
            lines.append(f"      {k['what']}: {verdicts.fmt_diff(k)}{per_seed}")
    return "\n".join(lines)


def _check_groups_fit(experiment: str, run: TrainConfig, sweep: SweepConfig) -> None:
    """Every variant's group / block size must fit the quantized linears of the run's model (attention and
    MLP-input linears read ``hidden_size`` features, the MLP output ``intermediate_size``), and a format
    with exact blocks (MX, NVFP4) must divide them; checked from the config, nothing built."""
    from ...models import model_config
    from ...sweeps.prepare import variants
    _, config = model_config(run.model.arch, run.model.preset, 8, run.data.seq_len, run.model.overrides)
    width = config.hidden_size
    widths = sorted({width, getattr(config, "intermediate_size", None) or width})
    specs = variants(sweep)
    too_big = sorted(s.group_size for s in specs if s.group_size > width)
    if too_big:
        raise ConfigError(f"experiment '{experiment}': group size {too_big[0]} is larger than the "
                          f"'{run.model.preset}' model's width ({width} input features); choose a wider --model "
                          f"or set the sweep's group_sizes to at most {width} (or -1)")
    for s in specs:
        problem = next((p for w in widths if (p := s.number_format().problem(w))), None)
        if problem:
            raise ConfigError(f"experiment '{experiment}': variant {s.label} on the '{run.model.preset}' model: "
                              f"{problem}")


Plan = list[tuple[dict[str, TrainConfig], dict[str, SweepConfig]]]  # per seed: (runs, sweeps) by label


def plan(spec: ReproduceSpec, out: Path, scale: float, model: str | None, threads: int | None,
         seeds: int | None) -> Plan:
    """Every seed's runs and sweeps (seed k = the runs' seed + k), checked against the model before training."""
    n = spec.seeds if seeds is None else seeds
    if n < 1:
        raise ConfigError(f"--seeds must be at least 1, got {n}")
    out_plan = []
    for k in range(n):
        runs = resolve_runs(spec, out, scale, model, threads, seed_index=k)
        out_plan.append((runs, {label: resolve_sweep(spec, cfg, out, threads, seed_index=k) for label, cfg in runs.items()}))
    for label, cfg in out_plan[0][0].items():  # a sweep that cannot run on the model fails now, not after training
        _check_groups_fit(spec.name, cfg, out_plan[0][1][label])
    return out_plan


def _train_and_sweep(spec: ReproduceSpec, the_plan: Plan, progress: bool) -> tuple[dict[str, str], float, float]:
    """Train every seed's runs, then sweep them (both resume); returns each folder's report and the times."""
    t0 = time.perf_counter()
    for runs, _ in the_plan:
        for label, cfg in runs.items():
            if progress:
                print(f"[{spec.name}] training run '{label}' (seed {cfg.seed}) -> {cfg.out}", flush=True)
            steps.train(cfg, progress=progress)
    t1 = time.perf_counter()
    reports = {}
    for _, sweeps in the_plan:
        for label, sc in sweeps.items():
            if progress:
                print(f"[{spec.name}] sweeping run '{label}' -> {sc.out}", flush=True)
            steps.sweep(sc, progress=progress)
            reports[sc.out] = str(steps.report(sc.out))
    return reports, t1 - t0, time.perf_counter() - t1


def _runs_info(the_plan: Plan, reports: dict[str, str]) -> dict[str, Any]:
    """Provenance of every run: by label for the first seed (as with one seed), ``label (seed s)`` for the rest."""
    info = {}
    for k, (runs, sweeps) in enumerate(the_plan):
        for lbl, cfg in runs.items():
            key = lbl if k == 0 else f"{lbl} (seed {cfg.seed})"
            info[key] = {"train_config": cfg.model_dump(exclude={"threads"}),
                         "sweep_config": sweeps[lbl].model_dump(exclude={"threads"}), "report": reports[sweeps[lbl].out]}
    return info


def reproduce_one(name_or_path: str | Path, out: str | Path = "reproduce-out", scale: float = 1.0,
                  model: str | None = None, threads: int | None = None, progress: bool = True,
                  overrides: dict[str, Any] | None = None, seeds: int | None = None) -> dict[str, Any]:
    """Run one experiment end to end with ``seeds`` training seeds (default: the file's ``seeds``, 1);
    returns (and writes to ``OUT/<name>/verdict.json``) the verdict, pooled over seeds when there are several."""
    spec, text = load_spec(name_or_path, overrides)
    out = Path(out)
    the_plan = plan(spec, out, scale, model, threads, seeds)
    reports, train_s, sweep_s = _train_and_sweep(spec, the_plan, progress)
    read = [_stores(sweeps) for _, sweeps in the_plan]
    kind = verdicts.get_verdict(spec.verdict)
    seed_values = [next(iter(runs.values())).seed for runs, _ in the_plan]
    claims = pool_claims(seed_values, kind.claims_per_seed(spec, [stores for stores, _ in read]))
    stores, trajs = read[0]
    exp_dir = out / spec.name
    figs = kind.figures(spec, stores, trajs, exp_dir / "figures", claims)
    if len(the_plan) > 1:
        figs += seeds_figures(spec, claims, exp_dir / "figures")
    result = {"experiment": spec.name, "finding": spec.finding, "summary": summary_line(spec, claims),
              "claims": claims, "scale": scale, "model": model, "train_s": train_s, "sweep_s": sweep_s,
              "runs": _runs_info(the_plan, reports),
              "figures": [str(f.path) for f in figs], "spec_yaml": text, "versions": versions(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if len(the_plan) > 1:
        result["seeds"] = seed_values
    exp_dir.mkdir(parents=True, exist_ok=True)
    if kind.table is not None:
        result["table"] = kind.table(spec, claims)
        write_text(exp_dir / "table.md", table_markdown(result["table"]))
    write_text(exp_dir / "verdict.json", json.dumps(result, indent=1, default=str))
    write_paper(result, exp_dir)  # the paper's statements beside ours: OUT/<name>/paper.json, not verdict.json
    records = [r for stores_k, _ in read for recs, _ in stores_k.values() for r in recs]
    result["page"] = str(write_page(result, figs, records, trajs, exp_dir / "index.html"))
    if progress:
        table = f"\n{table_markdown(result['table'])}" if "table" in result else ""
        print(f"\n{spec.name}: {spec.finding}\n{format_claims(claims)}\n{result['summary']}{table}\n"
              f"train {train_s:.0f} s, sweep {sweep_s:.0f} s; page: {result['page']}", flush=True)
    return result


# experiments that 'all' leaves out: scaling is the tokens-vs-decay debate across model sizes, not one of the
# paper's findings, and alone takes as long as the rest; name it to run it ('all scaling' runs both)
NOT_IN_ALL = {"scaling"}


def expand(names: list[str]) -> list[str]:
    """'all' -> every built-in experiment but :data:`NOT_IN_ALL` (in the order F2, F4, F3, wd, formats: F4 and
    formats reuse F2's run, wd F3's)."""
    out: list[str] = []
    for n in names:
        if n == "all":
            order = ["f2", "f4", "f3", "wd", "formats"]
            rest = [x for x in builtin_names() if x not in order and x not in NOT_IN_ALL]
            out += [x for x in order if x in builtin_names()] + rest
        else:
            out.append(n)
    if not out:
        raise ConfigError(f"name an experiment: {', '.join(builtin_names())}, all, or a YAML path")
    return list(dict.fromkeys(out))


def reproduce(names: list[str] | str, out: str | Path = "reproduce-out", jobs: int = 1,
              **kw: Any) -> list[dict[str, Any]]:
    """Run experiments in turn (``all`` = every built-in one but :data:`NOT_IN_ALL`); each writes ``OUT/<name>/``. ``jobs`` > 1: first
    train and sweep every run folder of every experiment and seed in that many worker processes (:mod:`.jobs`)."""
    names = [names] if isinstance(names, str) else names
    todo = expand(names)
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    units: dict[str, Unit] = {}
    for n in todo:  # fail on a bad name or config before hours of training, not after
        spec, _ = load_spec(n, kw.get("overrides"))
        for runs, sweeps in plan(spec, Path(out), kw.get("scale", 1.0), kw.get("model"), kw.get("threads"),
                                 kw.get("seeds")):
            add_units(units, runs, sweeps)
    if jobs > 1:
        run_units(units, Path(out), jobs, kw.get("threads"), kw.get("progress", True))
    results = []
    for n in todo:
        results.append(reproduce_one(n, out, **kw))
        write_index(Path(out))
        write_summary(Path(out))
    return results
