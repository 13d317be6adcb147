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
from .claims import Stores
from .formats import table_markdown
from .spec import ReproduceSpec, builtin_names, load_spec, resolve_runs, resolve_sweep


def _stores(sweeps: dict[str, Any]) -> tuple[Stores, dict[str, dict[str, Any]]]:
    """Per run label: (its records, its runs' metadata), and its stored trajectory; each read once."""
    out, trajs = {}, {}
    for label, sc in sweeps.items():
        store = Store(sc.out, create=False)
        trajs[label] = store.trajectories().get(label) or {}
        out[label] = ([r for r in store.records() if r.trajectory == label], trajs[label].get("runs") or {})
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
            lines.append(f"      {k['what']}: {verdicts.fmt_diff(k)}")
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


def reproduce_one(name_or_path: str | Path, out: str | Path = "reproduce-out", scale: float = 1.0,
                  model: str | None = None, threads: int | None = None, progress: bool = True,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one experiment end to end; returns (and writes to ``OUT/<name>/verdict.json``) the verdict."""
    spec, text = load_spec(name_or_path, overrides)
    out = Path(out)
    runs = resolve_runs(spec, out, scale, model, threads)
    sweeps = {label: resolve_sweep(spec, cfg, out, threads) for label, cfg in runs.items()}
    for label, cfg in runs.items():  # a sweep that cannot run on the model fails now, not after training
        _check_groups_fit(spec.name, cfg, sweeps[label])
    t0 = time.perf_counter()
    for label, cfg in runs.items():
        if progress:
            print(f"[{spec.name}] training run '{label}' -> {cfg.out}", flush=True)
        steps.train(cfg, progress=progress)
    t1 = time.perf_counter()
    reports = {}
    for label, sc in sweeps.items():
        if progress:
            print(f"[{spec.name}] sweeping run '{label}' -> {sc.out}", flush=True)
        steps.sweep(sc, progress=progress)
        reports[label] = str(steps.report(sc.out))
    t2 = time.perf_counter()
    stores, trajs = _stores(sweeps)
    kind = verdicts.get_verdict(spec.verdict)
    claims = kind.claims(spec, stores)
    exp_dir = out / spec.name
    figs = kind.figures(spec, stores, trajs, exp_dir / "figures", claims)
    result = {"experiment": spec.name, "finding": spec.finding, "summary": summary_line(spec, claims),
              "claims": claims, "scale": scale, "model": model, "train_s": t1 - t0, "sweep_s": t2 - t1,
              "runs": {lbl: {"train_config": cfg.model_dump(exclude={"threads"}),
                             "sweep_config": sweeps[lbl].model_dump(exclude={"threads"}),
                             "report": reports[lbl]} for lbl, cfg in runs.items()},
              "figures": [str(f.path) for f in figs], "spec_yaml": text, "versions": versions(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    exp_dir.mkdir(parents=True, exist_ok=True)
    if kind.table is not None:
        result["table"] = kind.table(spec, claims)
        write_text(exp_dir / "table.md", table_markdown(result["table"]))
    write_text(exp_dir / "verdict.json", json.dumps(result, indent=1, default=str))
    records = [r for recs, _ in stores.values() for r in recs]
    result["page"] = str(write_page(result, figs, records, trajs, exp_dir / "index.html"))
    if progress:
        table = f"\n{table_markdown(result['table'])}" if "table" in result else ""
        print(f"\n{spec.name}: {spec.finding}\n{format_claims(claims)}\n{result['summary']}{table}\n"
              f"train {t1 - t0:.0f} s, sweep {t2 - t1:.0f} s; page: {result['page']}", flush=True)
    return result


def expand(names: list[str]) -> list[str]:
    """'all' -> every built-in experiment (in the order F2, F4, F3, wd, formats, scaling: F4 and formats reuse F2's
    run, wd F3's)."""
    out: list[str] = []
    for n in names:
        if n == "all":
            order = ["f2", "f4", "f3", "wd", "formats", "scaling"]
            out += [x for x in order if x in builtin_names()] + [x for x in builtin_names() if x not in order]
        else:
            out.append(n)
    if not out:
        raise ConfigError(f"name an experiment: {', '.join(builtin_names())}, all, or a YAML path")
    return list(dict.fromkeys(out))


def reproduce(names: list[str] | str, out: str | Path = "reproduce-out", **kw: Any) -> list[dict[str, Any]]:
    """Run experiments in turn (``all`` = every built-in one); each writes ``OUT/<name>/``."""
    names = [names] if isinstance(names, str) else names
    todo = expand(names)
    for n in todo:  # fail on a bad name or config before hours of training, not after
        spec, _ = load_spec(n, kw.get("overrides"))
        resolve_runs(spec, Path(out), kw.get("scale", 1.0), kw.get("model"), kw.get("threads"))
    results = []
    for n in todo:
        results.append(reproduce_one(n, out, **kw))
        write_index(Path(out))
    return results
