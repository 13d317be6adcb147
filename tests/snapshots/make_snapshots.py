"""Snapshots of qrobust's numbers, made before issue 16's restructuring, so that it can show they do not move.

Each snapshot runs one workflow from its public entry point (the CLI or ``qrobust.*``) in a fresh folder and
keeps what is a result: record keys, metrics, per-block NLLs, weight errors, checkpoint and variant fields,
verdicts, the demo's printed table, the export's losses and tensor hashes. Timings, hosts, versions,
creation times and devices are dropped; paths are kept relative to the work folder.

    python tests/snapshots/make_snapshots.py [--only NAME ...] [--dir DIR]

writes ``NAME.json`` beside this file (or in DIR). tests/test_snapshot.py imports this module and
compares a fresh run with the stored files, so there is one producer. Regenerate ONLY for a change that is
meant to move numbers, and say so in its commit.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
THREADS = 2  # as tests/conftest.py: the snapshot is made and checked with the same torch thread count

# Fields that describe the run, not its result.
DROP = {"timings", "host", "versions", "created", "device", "seconds", "block_seconds", "train_s", "sweep_s",
        "schema", "transformers_version"}
LIST_MAX = 16  # longer number lists (per-block NLLs) are stored as length, fsum and a hash of their values

DEMO_ARGS = ["demo", "--quick", "--quiet"]
# micro: the GPTQ group of 128 does not fit its 32-wide linears, hence group 16
REPRODUCE = {"experiments": ["f2"], "scale": 0.1, "model": "micro",
             "overrides": {"sweep": {"group_sizes": [16], "eval": {"n_blocks": 16}, "calibration": {"n_samples": 16}}}}
SWEEP = {"methods": ["rtn", {"name": "gptq"}, {"name": "awq"}], "bits": [3, 4], "group_sizes": [16],
         "eval": {"n_blocks": 4}, "calibration": {"n_samples": 4}, "stream": True, "states": "disk"}
EXPORT = {"checkpoint": "main/step-0000012", "method": "gptq", "bits": 4, "group_size": 16, "calib_samples": 8,
          "verify_blocks": 4}


def tiny_train() -> dict[str, Any]:
    """tests/conftest.py's TINY_TRAIN as it is now (stored in the snapshot, so later edits there do not matter)."""
    spec = importlib.util.spec_from_file_location("_qrobust_conftest", HERE.parent / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return copy.deepcopy(mod.TINY_TRAIN)


# -- normalising ------------------------------------------------------------------------------------------
def _digest(xs: list[Any]) -> dict[str, Any]:
    return {"n": len(xs), "fsum": math.fsum(xs),
            "sha256": hashlib.sha256(json.dumps(xs).encode()).hexdigest()}


def normalize(obj: Any, root: Path) -> Any:
    """``obj`` without run-describing fields, with paths under ``root`` written as ``$OUT/...``."""
    roots = sorted({str(root), str(root.resolve())}, key=len, reverse=True)
    if isinstance(obj, dict):
        return {str(k): normalize(v, root) for k, v in obj.items() if k not in DROP}
    if isinstance(obj, (list, tuple)):
        if len(obj) > LIST_MAX and all(isinstance(x, float) for x in obj):
            return _digest(list(obj))
        return [normalize(x, root) for x in obj]
    if isinstance(obj, str):
        for r in roots:
            obj = obj.replace(r, "$OUT")
        return obj
    return obj


def store_records(results: Path, root: Path) -> dict[str, Any]:
    """Every record file of a results folder (any kind: records/, fp/, ...) as ``kind/key`` -> its result."""
    out = {}
    for sub in sorted(p for p in results.iterdir() if p.is_dir()):
        for f in sorted(sub.glob("*.json")):
            d = json.loads(f.read_text())
            if isinstance(d, dict) and d.get("key") == f.stem:
                out[f"{sub.name}/{f.stem}"] = normalize(d, root)
    return out


def _cli(args: list[str]) -> list[str]:
    """Run the CLI in-process; its printed lines."""
    from qrobust.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(args)
    if rc not in (0, None):
        raise RuntimeError(f"qrobust {' '.join(args)} exited {rc}")
    return buf.getvalue().splitlines()


def _train(root: Path, cfg: dict[str, Any]) -> Path:
    import qrobust
    run = root / "run"
    qrobust.train({**cfg, "out": str(run)}, progress=False)
    return run


# -- the snapshots ------------------------------------------------------------------------------------------
def make_demo_quick(root: Path, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``qrobust demo --quick``: its printed lines (timings masked) and every record it stored."""
    args = (inputs or {}).get("args", DEMO_ARGS)
    out = root / "demo"
    printed = _cli([*args, "--out", str(out)])
    printed = [re.sub(r"\b(train|sweep) \d+ s\b", r"\1 <t> s", line) for line in printed]
    return {"inputs": {"args": args}, "printed": normalize(printed, root),
            "records": store_records(out / "results", root)}


def make_streamed_sweep(root: Path, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A layer-streamed sweep (RTN, GPTQ, AWQ; states on disk) over the tiny trajectory of the tests."""
    import qrobust
    inputs = inputs or {"train": tiny_train(), "sweep": SWEEP}
    run = _train(root, inputs["train"])
    qrobust.sweep({**inputs["sweep"], "trajectory": str(run), "out": str(root / "results"),
                   "states_dir": str(root / "states")}, progress=False)
    return {"inputs": inputs, "records": store_records(root / "results", root)}


def make_reproduce(root: Path, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``qrobust reproduce f2 --scale 0.1`` on the micro model with a smaller sweep (the tiny model's sweep of
    19 checkpoints x 3 bit-widths did not finish in 10 min on 2 shared cores): every verdict.json and record."""
    import qrobust
    inputs = inputs or REPRODUCE
    out = root / "reproduce"
    qrobust.reproduce(inputs["experiments"], out=out, scale=inputs["scale"], model=inputs["model"], progress=False,
                      overrides=inputs["overrides"])
    verdicts = {p.parent.name: normalize(json.loads(p.read_text()), root) for p in sorted(out.glob("*/verdict.json"))}
    records = {}
    for results in sorted(p.parent for p in out.rglob("records") if p.is_dir()):
        records[str(results.relative_to(out))] = store_records(results, root)
    return {"inputs": inputs, "verdicts": verdicts, "records": records}


def tensor_hashes(folder: Path) -> dict[str, Any]:
    """dtype, shape and sha256 of the bytes of every tensor in the folder's safetensors files, read back."""
    from safetensors import safe_open
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in sorted(st.keys()):
                t = st.get_tensor(name).contiguous()
                raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
                out[f"{f.name}:{name}"] = {"dtype": str(t.dtype), "shape": list(t.shape),
                                           "sha256": hashlib.sha256(raw).hexdigest()}
    return out


def make_export(root: Path, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """GPTQ w4 export of a tiny checkpoint to compressed-tensors, reloaded with transformers (``--verify``)."""
    import qrobust
    inputs = inputs or {"train": tiny_train(), "export": EXPORT}
    e = inputs["export"]
    ck = _train(root, inputs["train"]) / "checkpoints" / e["checkpoint"]
    calib = qrobust.calib_blocks(ck, n_samples=e["calib_samples"])
    report = qrobust.export(ck, root / "export", method=e["method"], bits=e["bits"], group_size=e["group_size"],
                            calibration=calib, verify_blocks=e["verify_blocks"])
    qcfg = json.loads((root / "export" / "config.json").read_text()).get("quantization_config") or {}
    qcfg.pop("version", None)  # compressed-tensors' version, not a result
    return {"inputs": inputs, "report": normalize(report, root), "quantization_config": normalize(qcfg, root),
            "tensors": tensor_hashes(root / "export")}


SNAPSHOTS: dict[str, Callable[..., dict[str, Any]]] = {
    "demo_quick": make_demo_quick, "streamed_sweep": make_streamed_sweep, "reproduce": make_reproduce,
    "export": make_export}


# -- storing and comparing --------------------------------------------------------------------------------------
def as_json(data: Any) -> Any:
    """``data`` as it reads back from its JSON file (tuples become lists, floats round-trip exactly)."""
    return json.loads(json.dumps(data))


def produce(name: str, root: Path, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Snapshot ``name`` from the current code, worked out in ``root``."""
    torch.set_num_threads(THREADS)
    root.mkdir(parents=True, exist_ok=True)
    return as_json(SNAPSHOTS[name](root, inputs))


def path_of(name: str, folder: Path = HERE) -> Path:
    return folder / f"{name}.json"


def machine_signature() -> str:
    """The CPU model and the kernel set torch picks on it: float kernels differ in the last bits across
    microarchitectures (measured: an AMD EPYC with AVX-512 trains the demo to other bits than the machines
    these snapshots were made on), so a snapshot is exact per machine kind."""
    import platform
    import re

    import torch
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1]
                break
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model).strip("-") or "unknown-cpu"
    return f"{slug}-{torch.backends.cpu.get_cpu_capability().lower()}"


def machine_folder() -> Path:
    """Where this machine kind's own snapshots live (only those that differ from the ones beside this file)."""
    return HERE / "machines" / machine_signature()


def load(name: str, folder: Path = HERE) -> dict[str, Any]:
    """The snapshot for this machine kind when it has its own, else the one beside this file."""
    own = path_of(name, machine_folder())
    if folder == HERE and own.exists():
        return json.loads(own.read_text())
    return json.loads(path_of(name, folder).read_text())


def write(name: str, data: dict[str, Any], folder: Path = HERE) -> Path:
    p = path_of(name, folder)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=True) + "\n")
    tmp.replace(p)
    return p


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def first_difference(stored: Any, now: Any, path: str = "") -> str | None:
    """Where ``now`` first differs from ``stored`` (keys in sorted order), in one line; None when equal."""
    where = path or "(top level)"
    if isinstance(stored, dict) and isinstance(now, dict):
        for k in sorted(set(stored) | set(now)):
            sub = f"{path}.{k}" if path else k
            if k not in now:
                return f"{sub}: in the snapshot ({_short(stored[k])}) but missing now"
            if k not in stored:
                return f"{sub}: new now ({_short(now[k])}), not in the snapshot"
            diff = first_difference(stored[k], now[k], sub)
            if diff:
                return diff
        return None
    if isinstance(stored, list) and isinstance(now, list):
        for i, (a, b) in enumerate(zip(stored, now)):
            diff = first_difference(a, b, f"{path}[{i}]")
            if diff:
                return diff
        if len(stored) != len(now):
            return f"{where}: {len(stored)} items in the snapshot, {len(now)} now"
        return None
    if not _same(stored, now):
        return f"{where}: snapshot {_short(stored)} != now {_short(now)}"
    return None


def _short(v: Any, n: int = 120) -> str:
    s = repr(v) if not isinstance(v, (dict, list)) else json.dumps(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=list(SNAPSHOTS), help="only this snapshot (repeatable)")
    ap.add_argument("--dir", type=Path, default=HERE, help="where to write NAME.json (default: beside this file)")
    a = ap.parse_args(argv)
    a.dir.mkdir(parents=True, exist_ok=True)
    for name in a.only or list(SNAPSHOTS):
        with tempfile.TemporaryDirectory(prefix=f"qrobust-snap-{name}-") as tmp:
            print(f"{name} -> {write(name, produce(name, Path(tmp)), a.dir)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
