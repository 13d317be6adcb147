"""One function per command (``sweep``'s is in :mod:`.sweep`): read the parsed flags, call the API, print.
No work happens here."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, QrobustError
from ..workflows.options import CalibrationOptions, EvalOptions, LoadOptions, StreamOptions, TaskOptions
from .show import eval_lines, landscape_lines, sharpness_lines
from .train_tools import cmd_train_plan, cmd_train_slurm


def cmd_demo(a: argparse.Namespace) -> int:
    from ..workflows.demo import run_demo
    run_demo(out=a.out, quick=a.quick, threads=a.threads, progress=not a.quiet)
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from .. import api
    results = api.reproduce(a.experiments, out=a.out, scale=a.scale, model=a.model, threads=a.threads,
                            progress=not a.quiet, seeds=a.seeds, jobs=a.jobs)
    print("\n".join(["", "verdicts:"] + [r["summary"] for r in results]
                    + [f"pages: {', '.join(r['page'] for r in results)}"]))
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from .. import api
    over: dict[str, Any] = {k: v for k, v in (("out", a.out), ("steps", a.steps), ("threads", a.threads)) if v}
    if a.plan:
        return cmd_train_plan(a, over)
    if a.emit_slurm:
        return cmd_train_slurm(a)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
             if k in ("nnodes", "node_rank", "rdzv_backend", "rdzv_endpoint", "rdzv_id", "master_addr", "master_port")
             and v is not None]
    if flags and not a.nproc:
        raise QrobustError(f"{flags[0].split('=')[0]} is a torchrun flag: use it with --nproc")
    traj = api.train(a.config, progress=not a.quiet, trust_remote_code=a.trust_remote_code, nproc=a.nproc,
                     torchrun_flags=flags, **over)
    from ..training.launch import LAUNCHED_ENV
    if os.environ.get("RANK", "0") != "0" or os.environ.get(LAUNCHED_ENV):  # torchrun workers: one line in all
        return 0
    print(f"trained '{traj.name}': {len(traj)} checkpoints in {traj.source} (manifest: trajectory.json)")
    return 0


def method_options(pairs: list[str]) -> dict[str, Any]:
    """``--opt KEY=VALUE`` pairs, each value read as YAML (``true``, ``0.01``, ``reference``)."""
    from ..config import parse_yaml
    out: dict[str, Any] = {}
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise QrobustError(f"--opt expects KEY=VALUE, got '{kv}'")
        out[k.strip()] = parse_yaml(v, f"--opt {k.strip()}")
    return out


def quant_settings(a: argparse.Namespace) -> dict[str, Any]:
    """The variant's flags as ``quant_spec`` keywords (checked by the API before any work): a named
    ``--format``, or --bits / --group-size / --asym, not both."""
    common = {"method": a.method, "include": tuple(a.include), "exclude": tuple(a.exclude),
              "options": method_options(a.opt)}
    fmt = getattr(a, "number_format", "")
    if fmt:
        given = [f for f, v in (("--bits", a.bits), ("--group-size", a.group_size), ("--asym", a.asym or None))
                 if v is not None]
        if given:
            raise QrobustError(f"--format {fmt} sets the bits, groups and grid; drop {', '.join(given)}")
        return {**common, "format": fmt}
    group = 128 if a.group_size is None else a.group_size
    return {**common, "bits": a.bits, "group_size": group, "sym": not a.asym}


def quantizes(a: argparse.Namespace) -> bool:
    """Whether the flags ask for a quantized variant (--bits or --format)."""
    return a.bits is not None or bool(getattr(a, "number_format", ""))


def calibration(a: argparse.Namespace) -> CalibrationOptions:
    return CalibrationOptions(n_samples=a.calib_samples, seq_len=a.calib_seq_len, corpus=a.calib_corpus,
                              seed=a.calib_seed)


def load_options(a: argparse.Namespace) -> LoadOptions:
    return LoadOptions(allow_pickle=a.allow_pickle, trust_remote_code=a.trust_remote_code,
                       device=getattr(a, "device", "auto"), dtype=getattr(a, "dtype", "float32"))


def cmd_export(a: argparse.Namespace) -> int:
    from .. import api
    from ..quant.export import weight_format
    a.number_format = weight_format(a.number_format or "compressed-tensors")  # "compressed-tensors": the integer grid
    if not quantizes(a):
        raise ConfigError("export needs --bits (the integer grid) or --format NAME (a number format, e.g. nvfp4)")
    q = quant_settings(a)  # --format with --bits / --group-size / --asym is one line there
    fmt = q.pop("format", "") or "compressed-tensors"
    rep = api.export(a.checkpoint, Path(a.out), calibration=calibration(a), format=fmt,
                     verify_blocks=a.verify or 0, allow_pickle=a.allow_pickle, trust_remote_code=a.trust_remote_code,
                     device=a.device, dtype=a.dtype, **{k: v for k, v in q.items() if k != "options"}, **q["options"])
    written = json.loads((Path(rep["out"]) / "qrobust_export.json").read_text())
    print(f"{rep['label']}: exported as {written['format']} -> {rep['out']}")
    if "loss_reloaded" in rep:
        print(f"check on {a.verify} eval blocks: fake-quantized loss {rep['loss_fake_quant']:.6f}, reloaded with "
              f"transformers {rep['loss_reloaded']:.6f} (difference {rep['loss_diff']:+.2e})")
        if rep["loss_diff"] and "decompresses_to" in written:
            print(f"  compressed-tensors decompresses this format through {written['decompresses_to']}, which "
                  f"rounds {a.dtype} weights; the files hold them exactly")
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    from .. import api
    if not quantizes(a):
        raise QrobustError("give the variant: --bits (with --group-size, --asym) or --format (see --help)")
    report = api.quantize_checkpoint(a.checkpoint, a.out, quant_settings(a), calibration(a), load_options(a))
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        s = report["summary"]
        print(f"{report['label']}: {s['n_layers']} linears quantized, mean relative weight error "
              f"{s['rel_err_mean']:.4f} (max {s['rel_err_max']:.4f}) -> {Path(a.out)}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .. import api
    ev = EvalOptions(corpus=a.corpus, field=a.field, split=a.split, n_blocks=a.n_blocks, seq_len=a.seq_len,
                     batch_size=a.batch_size)
    tasks = TaskOptions(names=a.tasks, num_fewshot=a.num_fewshot, limit=a.limit, backend=a.tasks_backend) \
        if a.tasks else None
    stream = StreamOptions(states=a.states, states_dir=a.states_dir) if a.stream else None
    out = api.evaluate_checkpoint(a.checkpoint, quant_settings(a) if quantizes(a) else None, ev,
                                  calibration(a), load_options(a), tasks, stream, progress=not a.json)
    print(json.dumps(out, indent=1) if a.json else "\n".join(eval_lines(out)))
    return 0


def cmd_sharpness(a: argparse.Namespace) -> int:
    from .. import api
    r = api.sharpness(a.checkpoint, allow_pickle=a.allow_pickle, trust_remote_code=a.trust_remote_code,
                      top_k=a.top_k, iters=max(a.iters, a.top_k), method=a.method, trace=a.trace,
                      trace_matvecs=max(a.trace_matvecs, 3), params=a.params, per_layer=a.per_layer,
                      n_blocks=a.n_blocks, seq_len=a.seq_len, batch_size=a.batch_size, corpus=a.corpus,
                      split=a.split, seed=a.seed)
    print(json.dumps(r, indent=1) if a.json else "\n".join(sharpness_lines(r)))
    return 0


def cmd_landscape(a: argparse.Namespace) -> int:
    from .. import api
    r = api.landscape(a.source, a.out, plane=a.plane, runs=a.run, grid=a.grid, margin=a.margin, span=a.span,
                      center=a.center, n_blocks=a.n_blocks, seq_len=a.seq_len, batch_size=a.batch_size,
                      params=a.params, seed=a.seed, progress=not a.quiet, allow_pickle=a.allow_pickle,
                      trust_remote_code=a.trust_remote_code)
    print("\n".join(landscape_lines(r, a.plane, a.grid, a.out)))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .. import api
    print(f"report: {api.report(a.results, a.out)}")
    return 0


def cmd_results(a: argparse.Namespace) -> int:
    from .. import api
    text = api.results_text(a.results, a.format, a.out)
    if a.format == "parquet":
        print(text, end="")
    elif a.out:
        print(f"wrote {a.out}")
    else:
        sys.stdout.write(text or "")
    return 0


def cmd_average(a: argparse.Namespace) -> int:
    from .. import api
    traj = api.average(a.sources, a.averager, a.out, window=a.window, stride=a.stride, beta=a.beta, runs=a.run,
                       eval={"n_blocks": a.n_blocks, "corpus": a.corpus, "seq_len": a.seq_len}, progress=not a.quiet,
                       allow_pickle=a.allow_pickle, trust_remote_code=a.trust_remote_code)
    made = [c for c in traj if c.path.startswith(str(Path(a.out).resolve()))]
    runs = sorted({c.run for c in made})
    print(f"average ({a.averager}): {len(made)} averaged checkpoints in run(s) {', '.join(runs)} -> "
          f"{Path(a.out) / 'trajectory.json'} (with the {len(traj) - len(made)} originals)")
    return 0


def cmd_trajectory(a: argparse.Namespace) -> int:
    from .. import api
    if a.presets:
        sys.stdout.write(api.presets_text())
        return 0
    if not a.source:
        raise QrobustError("name a SOURCE (or pass --presets to see the open-model presets)")
    sys.stdout.write(api.trajectory_text(a.source, a.step_pattern, a.json))
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from .. import api
    options = {"tokenizer": a.tokenizer, "vocab_size": a.vocab_size, "tokenizer_chars": a.tokenizer_chars,
               "val_fraction": a.val_fraction, "seed": a.seed, "field": a.field,
               "max_chars": None if a.all_chars else a.max_chars}
    if a.shard_tokens:
        options["shard_tokens"] = a.shard_tokens
    m = api.prepare_shards(a.corpus, a.out, num_proc=a.num_proc, progress=not a.quiet,
                           trust_remote_code=a.trust_remote_code, **options)
    tr, va = m["splits"]["train"], m["splits"]["val"]
    print(f"wrote {a.out}: train {tr['n_tokens']:,} tokens ({tr['n_documents']:,} documents, {len(tr['files'])} "
          f"files), val {va['n_tokens']:,} tokens ({va['n_documents']:,} documents), {m['dtype']}, tokenizer "
          f"{m['tokenizer']['fingerprint']}; train with data.shards: {a.out}")
    return 0
