"""Plain-text tables of what qrobust holds: a results folder's records (``qrobust results``), a trajectory's
checkpoints and the open-model presets (``qrobust trajectory list``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import QrobustError
from ..io.atomic import write_text
from ..results.store import Store


def table(head: list[str], body: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart, one line per row."""
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*b) for b in body]) + "\n"


def _num(v: Any, spec: str, scale: float = 1.0) -> str:
    """A number formatted for the table; a record without it (or with text there) shows an empty cell."""
    return format(scale * v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per record: checkpoint, variant, FP and quantized loss, ΔQ L."""
    if not rows:
        return "no records\n"
    head = ["checkpoint", "step", "tokens", "phase", "variant", "loss_fp", "loss_q", "ΔQ L %"]
    body = []
    for r in rows:
        g = r["variant.group_size"]
        variant = f"{r['variant.method']}-w{r['variant.bits']}{'ch' if g == -1 else f'g{g}'}"
        body.append([str(r["checkpoint.name"]), str(r["checkpoint.step"]), str(r["checkpoint.tokens"] or ""),
                     str(r["checkpoint.phase"] or ""), variant, _num(r["metrics.loss_fp"], ".4f"),
                     _num(r["metrics.loss_q"], ".4f"), _num(r["metrics.dq_rel"], "+.3f", 100)])
    return table(head, body)


def _writable(out: str | Path, write: Any) -> Any:
    try:
        return write()
    except OSError as e:
        raise QrobustError(f"cannot write '{out}': {e.strerror or e}; choose a writable path") from None


def results_text(results: str | Path, format: str = "table", out: str | Path | None = None) -> str | None:
    """The records of a results folder as a table, CSV or JSON; with ``out`` written there (None returned).
    ``parquet`` needs ``out``; it returns what the store says it wrote."""
    store = Store(results, create=False)
    if format == "parquet":
        if not out:
            raise QrobustError("--format parquet needs --out FILE.parquet")
        return _writable(out, lambda: store.export("parquet", out))
    text = format_table(store.rows()) if format == "table" else store.export(format)
    if out:
        _writable(out, lambda: write_text(Path(out), text))
        return None
    return text


def presets_text() -> str:
    """Every open-model preset family: its description, its models and their repositories."""
    from ..sources import preset_files
    lines = []
    for fam, d in sorted(preset_files().items()):
        lines.append(f"{fam}: {d['description']}")
        for name, m in d["models"].items():
            lines.append(f"  preset:{name:<22} {m['repo']}")
        for u in d.get("uncertain", []):
            lines.append(f"  uncertain: {u}")
    return "".join(line + "\n" for line in lines)


def trajectory_text(source: str, step_pattern: str | None = None, as_json: bool = False) -> str:
    """The checkpoints a source resolves to (nothing is downloaded), as a table with notes, or as JSON."""
    from ..sources import hub_cache_dir, load_source, not_cached
    spec: Any = {"source": source, "step_pattern": step_pattern} if step_pattern else source
    traj = load_source(spec)
    if as_json:
        return json.dumps(traj.to_dict(), indent=1) + "\n"
    missing = {id(c) for c in not_cached(traj)}  # offline: revisions a sweep could not load are marked
    head = ["run", "step", "tokens", "lr", "phase", "checkpoint"]
    body = [[c.run, str(c.step), f"{c.tokens:,}" if c.tokens is not None else "",
             f"{c.lr:.3g}" if c.lr is not None else "", c.phase or "",
             (f"{c.repo}@{c.revision}" + (" (not cached)" if id(c) in missing else "")) if c.repo else c.path]
            for c in traj]
    runs = sorted({c.run for c in traj})
    lines = [f"{traj.name}: {len(traj)} checkpoints in {len(runs)} run(s) ({', '.join(runs)})"]
    if missing:
        lines.append(f"not cached: {len(missing)} of {len(traj)} revisions are not in the local HF cache "
                     f"({hub_cache_dir()}) and HF_HUB_OFFLINE is set; a sweep refuses them until they are downloaded")
    lines += [f"uncertain: {u}" for u in (traj.provenance or {}).get("uncertain", [])]
    return table(head, body) + "".join(line + "\n" for line in lines)
