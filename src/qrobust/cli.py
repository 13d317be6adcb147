"""Command line: argument parsing and one-line errors only; all work is done through the API."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

from .config import bits_problem, group_size_problem
from .errors import QrobustError, QrobustWarning


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _bits(v: str) -> int:
    try:
        b = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(bits_problem(v)) from None
    if bits_problem(b):
        raise argparse.ArgumentTypeError(bits_problem(b))
    return b


def _group(v: str) -> int:
    try:
        g = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(group_size_problem(v)) from None
    if group_size_problem(g):
        raise argparse.ArgumentTypeError(group_size_problem(g))
    return g


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{v}'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _positive_float(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{v}'") from None
    if not x > 0 or x != x or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return x


def _add_quant_args(p: argparse.ArgumentParser, bits_required: bool) -> None:
    p.add_argument("--method", default="rtn", help="quantization method (registry name; default: rtn)")
    p.add_argument("--bits", type=_bits, required=bits_required, default=None, help="weight bits, 2..8")
    p.add_argument("--group-size", type=_group, default=128,
                   help="columns per quantization group; -1 = one group per output channel (default 128)")
    p.add_argument("--asym", action="store_true", help="asymmetric grid (default: symmetric, as GPTQModel)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (gptq: profile=reference|llmcompressor|gptqmodel, damp=0.01, "
                        "act_order=true, static_groups=true, block_size=128, sequential=false, true_sequential=false, "
                        "quant_grid=reference|compressed-tensors; awq: profile=autoawq|llmcompressor, n_grid=20, "
                        "duo_scaling=false, clip=false, max_shrink=0.5, mapping=generic, "
                        "quant_grid=autoawq|compressed-tensors)")
    p.add_argument("--calib-samples", type=_positive, default=128, help="calibration samples (default 128)")
    p.add_argument("--calib-seq-len", type=_positive, default=None,
                   help="calibration sample length (default: the training length, at most 2048)")
    p.add_argument("--calib-corpus", default=None, help="calibration corpus spec (default: training split)")
    p.add_argument("--calib-seed", type=int, default=0)
    p.add_argument("--include", action="append", default=[], metavar="GLOB", help="only quantize matching linears")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip matching linears")


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model dtype (default float32); quantizer math stays fp32")


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle weight files (*.bin), read with torch.load(weights_only=True)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's custom model code")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="qrobust", formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="Measure how robust LM checkpoints are to post-training quantization along their "
                             "training trajectory.\nΔQ L = L(quantized) / L(full precision) - 1.",
                 epilog=_EXAMPLES)
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("demo", help="offline end-to-end demo: train, branch, quantize, evaluate, report")
    p.add_argument("--quick", action="store_true", help="a ~1 minute version (micro model, few steps)")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("reproduce", help="the paper's controlled experiments at CPU scale, with verdicts from the data",
                       description="Train, sweep and judge one or more experiments: f2 (cooldowns at several "
                                   "token budgets), f3 (peak LR at equal FP loss), f4 (LAWA vs LR decay), wd "
                                   "(weight decay on/off), all, or a YAML file of the same shape "
                                   "(experiments/reproduce/). Re-running resumes; shared runs are trained once.")
    p.add_argument("experiments", nargs="+", metavar="NAME", help="f2, f3, f4, wd, all, or a YAML path")
    p.add_argument("--out", default="reproduce-out", help="output folder (default: reproduce-out)")
    p.add_argument("--scale", type=_positive_float, default=1.0,
                   help="multiply every step count (token budget, checkpoint spacing, warmup, decays); default 1")
    p.add_argument("--model", default=None, metavar="PRESET",
                   help="model preset instead of the experiments' (e.g. pythia-14m, pythia-160m)")
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train a trajectory (main run + cooldown branches) from a YAML config",
                       description="Train the main run and its cooldown branches; re-running resumes exactly. "
                                   "Config keys: name, out, seed, steps, batch_size, checkpoint_every, data.*, "
                                   "model.*, optim.*, schedule.*, branches[], averaging[] (see README / experiments/).")
    p.add_argument("config", help="YAML training config (e.g. experiments/cooldown_tiny.yaml)")
    p.add_argument("--out", default=None, help="run folder (overrides the config's 'out')")
    p.add_argument("--steps", type=_positive, default=None, help="override 'steps'")
    p.add_argument("--threads", type=_positive, default=None)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the Python code of a tokenizer folder named in data.tokenizer")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("quantize", help="fake-quantize one checkpoint and save it (dequantized weights)")
    p.add_argument("checkpoint", help="Hugging Face model folder")
    p.add_argument("--out", required=True, help="folder for the quantized checkpoint")
    _add_quant_args(p, bits_required=True)
    _add_load_args(p)
    _add_device_args(p)
    p.add_argument("--json", action="store_true", help="print the per-layer report as JSON")

    p = sub.add_parser("export", help="quantize a checkpoint and write it as compressed-tensors (loads in transformers)",
                       description="Quantize (RTN or GPTQ, symmetric grid) and write integer codes + scales in the "
                                   "compressed-tensors pack-quantized format, which transformers loads with the "
                                   "compressed-tensors package installed, without qrobust.")
    p.add_argument("checkpoint", help="Hugging Face model folder")
    p.add_argument("--out", required=True, help="folder for the exported checkpoint")
    p.add_argument("--format", default="compressed-tensors", choices=["compressed-tensors"])
    p.add_argument("--verify", type=_positive, default=None, metavar="N_BLOCKS",
                   help="reload the export with transformers and compare its loss on N eval blocks")
    _add_quant_args(p, bits_required=True)
    _add_load_args(p)
    _add_device_args(p)

    p = sub.add_parser("eval", help="validation loss of a checkpoint, FP and (with --bits) quantized")
    p.add_argument("checkpoint")
    p.add_argument("--corpus", default=None, help="corpus spec (default: the checkpoint's training corpus)")
    p.add_argument("--field", default=None, help="text field for jsonl / HF datasets")
    p.add_argument("--split", choices=["val", "train", "all"], default="val")
    p.add_argument("--n-blocks", type=_positive, default=64)
    p.add_argument("--seq-len", type=_positive, default=None)
    p.add_argument("--batch-size", type=_positive, default=8)
    _add_quant_args(p, bits_required=False)
    _add_load_args(p)
    _add_device_args(p)
    p.add_argument("--tasks", action="append", default=None,
                   help="downstream task (builtin-nextline[:N], jsonl:PATH, preset:paper12, an lm-eval task); "
                        "repeatable; needs pip install 'qrobust[tasks]'")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--limit", type=_positive, default=None, help="items per task")
    p.add_argument("--tasks-backend", choices=["hf", "vllm"], default="hf",
                   help="lm-eval model type: hf (in-memory model, default) or vllm (when installed: serves a "
                        "saved copy of the FP / fake-quantized weights)")
    p.add_argument("--stream", action="store_true",
                   help="layer-streamed: one decoder block in memory at a time, FP and quantized in one pass "
                        "(for models beyond RAM; needs --bits; RTN, GPTQ and AWQ)")
    p.add_argument("--states", choices=["auto", "device", "cpu", "disk"], default="auto",
                   help="with --stream: where the hidden states carried between blocks live (auto: the fastest "
                        "that fits in half the free memory)")
    p.add_argument("--states-dir", type=Path, default=None,
                   help="with --stream --states disk: parent folder of the state files (default: system temp)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("sharpness", help="Hessian λmax and trace, per-layer sharpness, weight statistics of a checkpoint",
                       description="Curvature of the mean token loss over the first N eval blocks: top eigenvalues "
                                   "by Lanczos (with residuals), trace by Hutch++ (95%% interval).")
    p.add_argument("checkpoint")
    p.add_argument("--top-k", type=_positive, default=1, help="eigenvalues to report (default 1)")
    p.add_argument("--iters", type=_positive, default=20, help="Lanczos steps / power iterations (default 20)")
    p.add_argument("--method", choices=["lanczos", "power"], default="lanczos")
    p.add_argument("--trace", choices=["hutch++", "hutchinson", "none"], default="hutch++")
    p.add_argument("--trace-matvecs", type=_positive, default=30, help="Hessian products for the trace (default 30)")
    p.add_argument("--params", action="append", default=None,
                   help="parameter glob, or 'linear' (quantized linears' weights); repeatable (default: all)")
    p.add_argument("--per-layer", action="store_true", help="also λmax of each quantized linear alone")
    p.add_argument("--n-blocks", type=_positive, default=8)
    p.add_argument("--seq-len", type=_positive, default=None)
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--corpus", default=None, help="corpus spec (default: the checkpoint's training corpus)")
    p.add_argument("--split", choices=["val", "train", "all"], default="val")
    p.add_argument("--seed", type=int, default=0)
    _add_load_args(p)
    p.add_argument("--json", action="store_true", help="print everything as JSON")

    p = sub.add_parser("landscape", help="trajectory PCA and a 2-D loss landscape (PCA plane or random directions)",
                       description="Exact PCA of the checkpoints (Gram matrix, streamed from safetensors) and the eval "
                                   "loss on a grid; writes OUT/landscape.json, landscape_<plane>.png and "
                                   "pca_projection.png.")
    p.add_argument("source", help="trajectory source (run folder, folders:GLOB, hf:..., preset:...)")
    p.add_argument("--out", required=True)
    p.add_argument("--plane", choices=["pca", "random"], default="pca")
    p.add_argument("--run", action="append", default=None, help="only these runs, repeatable (default: all)")
    p.add_argument("--grid", type=_positive, default=11, help="points per side (default 11)")
    p.add_argument("--margin", type=float, default=0.25, help="pca: grid margin beyond the checkpoints (0.25)")
    p.add_argument("--span", type=float, default=1.0, help="random: grid half-width in filter-norm units (1.0)")
    p.add_argument("--center", default=None, help="random: checkpoint name at the centre (default: the last)")
    p.add_argument("--params", action="append", default=None, help="tensor glob(s) the plane moves (default all)")
    p.add_argument("--n-blocks", type=_positive, default=8)
    p.add_argument("--seq-len", type=_positive, default=None)
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--seed", type=int, default=0)
    _add_load_args(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("sweep", help="every checkpoint x methods x bits x group sizes -> results folder",
                       description="Load each checkpoint once, evaluate FP once, then quantize + evaluate every "
                                   "variant; finished records are skipped. Config keys: trajectory, out, methods, "
                                   "bits, group_sizes, sym, include, exclude, eval.*, calibration.*, average[], geometry.*, "
                                   "tasks.* "
                                   "(see experiments/sweep_rtn.yaml).")
    p.add_argument("config", help="YAML sweep config (e.g. experiments/sweep_rtn.yaml)")
    p.add_argument("--out", default=None, help="results folder (overrides the config's 'out')")
    p.add_argument("--threads", type=_positive, default=None)
    p.add_argument("--device", default=None, help="overrides the config's 'device' (auto, cpu, cuda, cuda:N)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="overrides the config's 'dtype' (a non-float32 dtype gets its own records)")
    p.add_argument("--stream", action="store_true", default=None,
                   help="layer-streamed (sets the config's 'stream': one decoder block in memory at a time)")
    p.add_argument("--states", default=None, choices=["auto", "device", "cpu", "disk"],
                   help="overrides the config's 'states' (where streamed hidden states live)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--array-index", type=int, default=None,
                   help="this worker's index in a job array (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN)")
    p.add_argument("--array-count", type=_positive, default=None,
                   help="workers in the job array; each takes every COUNT-th checkpoint (default: $SLURM_ARRAY_TASK_COUNT)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this process; ray: one Ray task per checkpoint (local Ray, or --ray-address)")
    p.add_argument("--ray-address", default=None, help="address of an existing Ray cluster (default: start one here)")
    p.add_argument("--cpus-per-task", type=_positive, default=1, help="CPUs (and torch threads) per Ray task")
    p.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs per Ray task")
    p.add_argument("--emit-slurm", action="store_true",
                   help="print an sbatch script that runs this sweep as a job array (needs --array-count), then exit")
    p.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="extra #SBATCH option for --emit-slurm, repeatable (e.g. time=04:00:00, gres=gpu:1)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (checkpoints, variants, what is stored or missing) without loading a model")

    p = sub.add_parser("report", help="figures + self-contained HTML for a results folder")
    p.add_argument("results")
    p.add_argument("--out", default=None, help="report folder (default: RESULTS/report)")

    p = sub.add_parser("results", help="print or export the records of a results folder")
    p.add_argument("results")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table",
                   help="parquet needs --out and pyarrow (installed with datasets)")
    p.add_argument("--out", default=None, help="write to this file instead of stdout")

    p = sub.add_parser("average", help="weight averaging: LAWA / EMA along a trajectory, uniform or greedy soups",
                       description="Writes averaged checkpoints (streamed from safetensors, fp32 accumulation) and "
                                   "OUT/trajectory.json holding the original and the averaged runs: sweep it like any "
                                   "trajectory.")
    p.add_argument("averager", choices=["lawa", "ema", "soup", "greedy-soup"])
    p.add_argument("sources", nargs="+", help="trajectory source(s); soups use the last checkpoint of every run")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--window", type=_positive, default=5, help="LAWA: checkpoints per mean (default 5)")
    p.add_argument("--stride", type=_positive, default=1, help="LAWA: take every STRIDE-th checkpoint (default 1)")
    p.add_argument("--beta", type=float, default=0.9, help="EMA decay per checkpoint (default 0.9)")
    p.add_argument("--run", action="append", default=None, help="only these runs (LAWA / EMA), repeatable")
    p.add_argument("--n-blocks", type=_positive, default=64, help="greedy soup: held-out blocks (default 64)")
    p.add_argument("--corpus", default=None, help="greedy soup: held-out corpus spec (default: the training corpus; "
                                                  "needed for checkpoints qrobust did not train)")
    p.add_argument("--seq-len", type=_positive, default=None,
                   help="greedy soup: tokens per held-out block (default: the training length, else 128)")
    _add_load_args(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("trajectory", help="inspect trajectory sources")
    tsub = p.add_subparsers(dest="tcmd", metavar="ACTION", required=True)
    t = tsub.add_parser("list", help="the checkpoints a source resolves to (nothing is downloaded)",
                        description="SOURCE: a run folder, a model folder, folders:GLOB, hf:ORG/NAME[@REV1,REV2], "
                                    "preset:NAME (see --presets); append ?every=N, ?steps=A,B, ?max=N or ?run=NAME")
    t.add_argument("source", nargs="?", default=None)
    t.add_argument("--step-pattern", default=None, help="regex whose first group is the step (folder sources)")
    t.add_argument("--presets", action="store_true", help="list the open-model presets instead")
    t.add_argument("--json", action="store_true", help="print the trajectory as JSON")
    return ap


_EXAMPLES = """examples:
  qrobust demo --quick                              # ~15 s offline end-to-end run
  qrobust reproduce all                             # the paper's F2/F3/F4/weight-decay experiments + verdicts
  qrobust train experiments/cooldown_tiny.yaml      # checkpoints + trajectory.json in runs/cooldown_tiny
  qrobust sweep experiments/sweep_rtn.yaml          # RTN 3/4-bit on every checkpoint -> results/
  qrobust report results/cooldown_tiny              # figures + index.html
  qrobust results results/cooldown_tiny --format csv
  qrobust trajectory list preset:pythia-160m?every=10000
  qrobust eval runs/cooldown_tiny/checkpoints/main/step-0001200 --bits 3
"""


def _version() -> str:
    from . import __version__
    return f"qrobust {__version__}"


def _cmd_demo(a: argparse.Namespace) -> int:
    from .workflows.demo import run_demo
    run_demo(out=a.out, quick=a.quick, threads=a.threads, progress=not a.quiet)
    return 0


def _cmd_reproduce(a: argparse.Namespace) -> int:
    from . import api
    results = api.reproduce(a.experiments, out=a.out, scale=a.scale, model=a.model, threads=a.threads,
                            progress=not a.quiet)
    print("\n".join(["", "verdicts:"] + [r["summary"] for r in results] + [f"pages: {', '.join(r['page'] for r in results)}"]))
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from . import api
    over: dict[str, Any] = {k: v for k, v in (("out", a.out), ("steps", a.steps), ("threads", a.threads)) if v}
    traj = api.train(a.config, progress=not a.quiet, trust_remote_code=a.trust_remote_code, **over)
    print(f"trained '{traj.name}': {len(traj)} checkpoints in {traj.source} (manifest: trajectory.json)")
    return 0


def _options(pairs: list[str]) -> dict[str, Any]:
    from .config import parse_yaml
    out: dict[str, Any] = {}
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise QrobustError(f"--opt expects KEY=VALUE, got '{kv}'")
        out[k.strip()] = parse_yaml(v, f"--opt {k.strip()}")
    return out


def _spec(a: argparse.Namespace):
    from .quant import QuantSpec, get_quantizer
    opts = _options(a.opt)
    spec = QuantSpec(method=a.method, bits=a.bits, group_size=a.group_size, sym=not a.asym,
                     include=tuple(a.include), exclude=tuple(a.exclude), options=tuple(sorted(opts.items())))
    get_quantizer(spec.method).check_options(opts)
    return spec


def _calibration_for(a: argparse.Namespace, checkpoint: str):
    from .quant import get_quantizer
    if not get_quantizer(a.method).needs_calibration:
        return None
    from .api import calib_blocks
    return calib_blocks(checkpoint, a.calib_samples, a.calib_seq_len, a.calib_corpus, a.calib_seed,
                        trust_remote_code=a.trust_remote_code)


def _check_quant_out(out: Path, checkpoint: Path, marker: str = "quantization.json",
                     what: str = "qrobust quantize") -> None:
    """Refuse any --out that would overwrite the FP checkpoint or unrelated data."""
    o, c = out.resolve(), checkpoint.resolve()
    if o == c or c in o.parents:
        raise QrobustError(f"--out '{out}' is the checkpoint folder or inside it; choose a separate folder")
    if o.exists() and not o.is_dir():
        raise QrobustError(f"--out '{out}' is an existing file; choose a new folder")
    anc = next(p for p in [o, *o.parents] if p.exists())
    if not anc.is_dir():
        raise QrobustError(f"cannot write the quantized checkpoint to '{out}': '{anc}' is a file, not a folder")
    if o.is_dir() and any(o.iterdir()) and not (o / marker).is_file():
        raise QrobustError(f"--out '{out}' already holds other files; choose a new or empty folder "
                           f"(only an earlier '{what}' output is replaced)")


def _cmd_export(a: argparse.Namespace) -> int:
    from . import api
    out = Path(a.out)
    _check_quant_out(out, Path(a.checkpoint), marker="qrobust_export.json", what="qrobust export")
    spec = _spec(a)
    calibration = _calibration_for(a, a.checkpoint)
    rep = api.export(a.checkpoint, out, method=spec.method, bits=spec.bits, group_size=spec.group_size, sym=spec.sym,
                     include=spec.include, exclude=spec.exclude, calibration=calibration, format=a.format,
                     verify_blocks=a.verify or 0, allow_pickle=a.allow_pickle, trust_remote_code=a.trust_remote_code,
                     device=a.device, dtype=a.dtype, **dict(spec.options))
    print(f"{rep['label']}: exported as {a.format} (pack-quantized) -> {rep['out']}")
    if "loss_reloaded" in rep:
        print(f"check on {a.verify} eval blocks: fake-quantized loss {rep['loss_fake_quant']:.6f}, reloaded with "
              f"transformers {rep['loss_reloaded']:.6f} (difference {rep['loss_diff']:+.2e})")
    return 0


def _cmd_quantize(a: argparse.Namespace) -> int:
    from .data.tokenizer import load_tokenizer
    from .models import load_checkpoint, save_checkpoint
    from .quant import quantized

    out = Path(a.out)
    _check_quant_out(out, Path(a.checkpoint))
    spec = _spec(a)
    model = load_checkpoint(a.checkpoint, allow_pickle=a.allow_pickle, trust_remote_code=a.trust_remote_code,
                            dtype=a.dtype, device=a.device)
    tok = load_tokenizer(a.checkpoint, a.trust_remote_code)
    with quantized(model, spec, _calibration_for(a, a.checkpoint)) as res:
        report = {"source": str(Path(a.checkpoint).resolve()), "spec": spec.to_dict(), "label": spec.label,
                  "summary": res.summary(), "layers": res.layers, "seconds": res.seconds}
        try:
            save_checkpoint(model, tok, out, files={"quantization.json": json.dumps(report, indent=1)})
        except OSError as e:
            raise QrobustError(f"cannot write the quantized checkpoint to '{out}': {e.strerror or e}") from None
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        s = res.summary()
        print(f"{spec.label}: {s['n_layers']} linears quantized, mean relative weight error "
              f"{s['rel_err_mean']:.4f} (max {s['rel_err_max']:.4f}) -> {out}")
    return 0


def _eval_streamed(a: argparse.Namespace, spec) -> int:
    from .api import eval_blocks
    from .quant.pipelines.streamed import describe, streamed_losses
    if spec is None or a.tasks:
        raise QrobustError("--stream evaluates FP and quantized loss in one pass: give --bits, and no --tasks")
    from .data.tokenizer import load_tokenizer
    from .models import check_vocab, read_model_config
    config = read_model_config(a.checkpoint)
    check_vocab(config, load_tokenizer(a.checkpoint, a.trust_remote_code), a.checkpoint)  # as in memory, before any work
    blocks = eval_blocks(a.checkpoint, a.corpus, a.split, a.n_blocks, a.seq_len, a.field, a.trust_remote_code)
    calib = _calibration_for(a, a.checkpoint)
    _check_lengths(config, a.checkpoint, blocks, calib)
    res = streamed_losses(a.checkpoint, spec, blocks, a.batch_size, device=a.device, dtype=a.dtype,
                          trust_remote_code=a.trust_remote_code, progress=not a.json,
                          calibration=calib, states=a.states, states_dir=a.states_dir)
    out = {"checkpoint": str(a.checkpoint), "streamed": True, **describe(res)}
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"loss_fp {out['loss_fp']:.4f} over {out['n_tokens']} tokens | {out['label']}: loss_q {out['loss_q']:.4f}, "
              f"ΔQ L {100 * out['dq_rel']:+.3f}% (layer-streamed, {out['blocks']} blocks, states on {out['states']}, "
              f"median {out['block_seconds_median']:.2f} s per block)")
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from .api import eval_blocks
    from .evaluate import degradation, evaluate_loss
    from .data.tokenizer import load_tokenizer
    from .models import check_vocab, load_checkpoint
    from .quant import quantized

    spec = _spec(a) if a.bits is not None else None  # bad options fail before any work
    if a.stream:
        return _eval_streamed(a, spec)
    if a.tasks:
        from .downstream.run import check_backend
        check_backend(a.tasks_backend)
    model = load_checkpoint(a.checkpoint, allow_pickle=a.allow_pickle, trust_remote_code=a.trust_remote_code,
                            dtype=a.dtype, device=a.device)
    tok = load_tokenizer(a.checkpoint, a.trust_remote_code)
    check_vocab(model, tok, a.checkpoint)
    blocks = eval_blocks(a.checkpoint, a.corpus, a.split, a.n_blocks, a.seq_len, a.field, a.trust_remote_code)
    calib = _calibration_for(a, a.checkpoint) if spec is not None else None
    _check_lengths(model.config, a.checkpoint, blocks, calib)
    progress = not a.json
    fp = evaluate_loss(model, blocks, a.batch_size, progress, desc="FP", name=f"checkpoint '{a.checkpoint}'")
    out: dict[str, Any] = {"checkpoint": str(a.checkpoint), "n_blocks": int(blocks.shape[0]),
                           "seq_len": int(blocks.shape[1]), "n_tokens": fp.n_tokens, "loss_fp": fp.loss,
                           "ppl_fp": fp.ppl}
    with tempfile.TemporaryDirectory(prefix="qrobust-tasks-") as work:  # generated task files live only here
        run_tasks = _task_runner(a, model, tok, Path(work)) if a.tasks else None
        if run_tasks is not None:
            out["tasks_fp"] = run_tasks()
        if spec is not None:
            with quantized(model, spec, calib) as res:
                q = evaluate_loss(model, blocks, a.batch_size, progress, desc=spec.label,
                                  name=f"checkpoint '{a.checkpoint}' quantized as {spec.label}")
                if run_tasks is not None:
                    out["tasks_q"] = run_tasks()
            out.update({"variant": spec.label, **degradation(fp.loss, q.loss), **res.summary()})
    if "tasks_q" in out:
        from .downstream.run import accuracy_drop
        out["tasks_drop"] = accuracy_drop(out["tasks_fp"], out["tasks_q"])
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        line = f"loss_fp {fp.loss:.4f} (ppl {fp.ppl:.2f}) over {fp.n_tokens} tokens"
        if a.bits is not None:
            line += f" | {out['variant']}: loss_q {out['loss_q']:.4f}, ΔQ L {100 * out['dq_rel']:+.3f}%"
        print(line)
        for task, r in (out.get("tasks_fp") or {}).items():
            q_r = (out.get("tasks_q") or {}).get(task)
            qpart = f" | quantized acc {q_r['acc']:.4f}" if q_r else ""
            print(f"{task}: acc {r['acc']:.4f} ± {r['acc_stderr']:.4f}, acc_norm {r['acc_norm']:.4f} "
                  f"(n={r['n']}){qpart}")
    return 0


def _check_lengths(config, checkpoint: str, blocks, calib) -> None:
    """Evaluation and calibration sequences must fit the model's positions: refused before any work."""
    from .checks import check_seq_len
    check_seq_len(config, blocks.shape[1], checkpoint)
    if calib is not None:
        check_seq_len(config, calib.shape[1], checkpoint, "calibration sample length", "--calib-seq-len")


def _task_runner(a: argparse.Namespace, model, tok, work: Path):
    """A no-argument callable running the requested downstream tasks on ``model`` as it is when called."""
    import functools

    from .downstream.run import evaluate_tasks
    from .downstream.tasks import context_fits, held_out_documents, model_context, resolve_tasks
    names, yaml_dir = resolve_tasks(a.tasks, work, held_out_documents(Path(a.checkpoint)),
                                    context_fits(tok, model_context(model)))
    return functools.partial(evaluate_tasks, model, tok, names, yaml_dir, a.num_fewshot, a.limit,
                             backend=a.tasks_backend, trust_remote_code=a.trust_remote_code)


def _cmd_sharpness(a: argparse.Namespace) -> int:
    from . import api
    r = api.sharpness(a.checkpoint, allow_pickle=a.allow_pickle, trust_remote_code=a.trust_remote_code,
                     top_k=a.top_k, iters=max(a.iters, a.top_k), method=a.method, trace=a.trace,
                     trace_matvecs=max(a.trace_matvecs, 3), params=a.params, per_layer=a.per_layer,
                     n_blocks=a.n_blocks, seq_len=a.seq_len, batch_size=a.batch_size, corpus=a.corpus,
                     split=a.split, seed=a.seed)
    if a.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"loss {r['loss']:.4f} over {r['n_blocks']}x{r['seq_len']} tokens, {r['n_params']:,} parameters, "
          f"|grad| {r['grad_norm']:.4g}")
    e = r.get("eigen")
    if e:
        vals = ", ".join(f"{v:.5g} (res {res:.2g})" for v, res in zip(e["values"], e["residuals"]))
        state = "converged" if e["converged"] else f"not converged in {e['iterations']} steps"
        print(f"top eigenvalues: {vals}  [{e['method']}, {e['matvecs']} products, {state}]")
    t = r.get("trace")
    if t:
        print(f"trace: {t['trace']:.5g}  95% CI [{t['ci_low']:.5g}, {t['ci_high']:.5g}]  "
              f"[{t['method']}, {t['matvecs']} products]")
    for name, le in (r.get("layers") or {}).items():
        print(f"  λmax {le['values'][0]:10.5g}  {name}")
    w = (r.get("weights") or {}).get("overall")
    if w:
        k = r["weights"]["k"]
        print(f"weights (quantized linears): max/RMS {w['max_over_rms']:.3g}, kurtosis {w['kurtosis']:.3g}, "
              f"beyond {k:g}σ {100 * w[f'frac_beyond_{k:g}sigma']:.3f}%")
    return 0


def _cmd_landscape(a: argparse.Namespace) -> int:
    from . import api
    r = api.landscape(a.source, a.out, plane=a.plane, runs=a.run, grid=a.grid, margin=a.margin, span=a.span,
                      center=a.center, n_blocks=a.n_blocks, seq_len=a.seq_len, batch_size=a.batch_size,
                      params=a.params, seed=a.seed, progress=not a.quiet, allow_pickle=a.allow_pickle,
                      trust_remote_code=a.trust_remote_code)
    if a.plane == "pca":
        evr = r["explained_variance_ratio"]
        print(f"PCA of {len(r['checkpoints'])} checkpoints, {r['n_params']:,} parameters: PC1 {100 * evr[0]:.1f} %, "
              f"PC2 {100 * evr[1]:.1f} % of the variance" if len(evr) > 1 else "")
    flat = [v for row in r["landscape"]["loss"] for v in row]
    print(f"landscape ({a.plane}, {a.grid}x{a.grid}): loss {min(flat):.4f} .. {max(flat):.4f} -> "
          f"{Path(a.out) / 'landscape.json'}")
    return 0


def _array_from_env(a: argparse.Namespace) -> tuple[int | None, int | None]:
    """--array-index/--array-count, else Slurm's job-array variables; (None, None) outside an array."""
    index, count = a.array_index, a.array_count
    env = os.environ
    if index is None and env.get("SLURM_ARRAY_TASK_ID"):
        try:
            index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = count or int(env["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError):
            raise QrobustError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is missing or not a number; "
                               "pass --array-index and --array-count") from None
    if (index is None) != (count is None):
        raise QrobustError("a job array needs both --array-index and --array-count")
    return index, count


def _cmd_sweep(a: argparse.Namespace) -> int:
    from . import api
    if a.emit_slurm:
        if a.array_count is None:
            raise QrobustError("--emit-slurm needs --array-count N (the number of array tasks)")
        api.sweep_config(a.config)  # a bad config fails here, not on the cluster
        from .sweeps.executors.array import slurm_script
        sys.stdout.write(slurm_script(a.config, a.array_count, a.out, a.threads, a.slurm_opt))
        return 0
    index, count = _array_from_env(a)
    over = {k: v for k, v in (("out", a.out), ("threads", a.threads), ("device", a.device), ("dtype", a.dtype),
                              ("stream", a.stream), ("states", a.states)) if v}
    if a.dry_run:
        from .sweeps.dry_run import dry_run
        sys.stdout.write(dry_run(api.sweep_config(a.config, **over)))
        return 0
    s = api.sweep(a.config, progress=not a.quiet, array_index=index, array_count=count, executor=a.executor,
                  ray_address=a.ray_address, cpus_per_task=a.cpus_per_task, gpus_per_task=a.gpus_per_task, **over)
    part = f" (array task {index} of {count})" if count else ""
    busy = f", {s.claimed_elsewhere} held by other workers" if s.claimed_elsewhere else ""
    busy += f", {s.averaged} averaged checkpoints made" if s.averaged else ""
    busy += f", geometry of {s.geometry} checkpoints" if s.geometry else ""
    print(f"sweep{part}: {s.checkpoints} checkpoints, {s.records_written} new records, {s.records_skipped} already "
          f"done{busy}, {s.model_loads} model loads, {s.fp_evals} FP evaluations, {s.seconds:.1f} s -> {s.out}")
    if s.left_groups:  # another worker still holds them: exiting 0 would hide missing work
        raise QrobustError(f"{s.left_groups} checkpoint group(s) ({s.left_records} records) are not done: another "
                           "worker still holds them; re-run the sweep to finish them (a dead worker's claims are "
                           "taken over)")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from . import api
    print(f"report: {api.report(a.results, a.out)}")
    return 0


def _cmd_results(a: argparse.Namespace) -> int:
    from .results.store import Store
    from .io.atomic import write_text
    store = Store(a.results, create=False)
    if a.format == "parquet":
        if not a.out:
            raise QrobustError("--format parquet needs --out FILE.parquet")
        try:
            print(store.export("parquet", a.out), end="")
        except OSError as e:
            raise QrobustError(f"cannot write '{a.out}': {e.strerror or e}; choose a writable path") from None
        return 0
    text = format_table(store.rows()) if a.format == "table" else store.export(a.format)
    if a.out:
        try:
            write_text(Path(a.out), text)
        except OSError as e:
            raise QrobustError(f"cannot write '{a.out}': {e.strerror or e}; choose a writable path") from None
        print(f"wrote {a.out}")
    else:
        sys.stdout.write(text)
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
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
    return _table(head, body)


def _num(v: Any, spec: str, scale: float = 1.0) -> str:
    """A number formatted for the table; a record without it (or with text there) shows an empty cell."""
    return format(scale * v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


def _table(head: list[str], body: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart, one line per row."""
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*b) for b in body]) + "\n"


def _cmd_average(a: argparse.Namespace) -> int:
    from . import api
    traj = api.average(a.sources, a.averager, a.out, window=a.window, stride=a.stride, beta=a.beta, runs=a.run,
                       eval={"n_blocks": a.n_blocks, "corpus": a.corpus, "seq_len": a.seq_len}, progress=not a.quiet,
                       allow_pickle=a.allow_pickle, trust_remote_code=a.trust_remote_code)
    made = [c for c in traj if c.path.startswith(str(Path(a.out).resolve()))]
    runs = sorted({c.run for c in made})
    print(f"average ({a.averager}): {len(made)} averaged checkpoints in run(s) {', '.join(runs)} -> "
          f"{Path(a.out) / 'trajectory.json'} (with the {len(traj) - len(made)} originals)")
    return 0


def _cmd_trajectory(a: argparse.Namespace) -> int:
    from .sources import hub_cache_dir, load_source, not_cached, preset_files
    if a.presets:
        for fam, d in sorted(preset_files().items()):
            print(f"{fam}: {d['description']}")
            for name, m in d["models"].items():
                print(f"  preset:{name:<22} {m['repo']}")
            for u in d.get("uncertain", []):
                print(f"  uncertain: {u}")
        return 0
    if not a.source:
        raise QrobustError("name a SOURCE (or pass --presets to see the open-model presets)")
    spec: Any = {"source": a.source, "step_pattern": a.step_pattern} if a.step_pattern else a.source
    traj = load_source(spec)
    if a.json:
        print(json.dumps(traj.to_dict(), indent=1))
        return 0
    missing = {id(c) for c in not_cached(traj)}  # offline: revisions a sweep could not load are marked
    head = ["run", "step", "tokens", "lr", "phase", "checkpoint"]
    body = [[c.run, str(c.step), f"{c.tokens:,}" if c.tokens is not None else "",
             f"{c.lr:.3g}" if c.lr is not None else "", c.phase or "",
             (f"{c.repo}@{c.revision}" + (" (not cached)" if id(c) in missing else "")) if c.repo else c.path]
            for c in traj]
    sys.stdout.write(_table(head, body))
    runs = sorted({c.run for c in traj})
    print(f"{traj.name}: {len(traj)} checkpoints in {len(runs)} run(s) ({', '.join(runs)})")
    if missing:
        print(f"not cached: {len(missing)} of {len(traj)} revisions are not in the local HF cache ({hub_cache_dir()}) "
              "and HF_HUB_OFFLINE is set; a sweep refuses them until they are downloaded")
    for u in (traj.provenance or {}).get("uncertain", []):
        print(f"uncertain: {u}")
    return 0


COMMANDS = {"sharpness": _cmd_sharpness, "landscape": _cmd_landscape, "demo": _cmd_demo, "train": _cmd_train, "quantize": _cmd_quantize, "eval": _cmd_eval,
            "sweep": _cmd_sweep, "report": _cmd_report, "results": _cmd_results, "trajectory": _cmd_trajectory,
            "average": _cmd_average, "reproduce": _cmd_reproduce, "export": _cmd_export}


class _warnings_as_lines(warnings.catch_warnings):
    """qrobust's own warnings (a skipped unreadable record, ...) as one stderr line each, once per message;
    other libraries' warnings go where they went before."""

    def __init__(self, cmd: str):
        super().__init__()
        self.cmd = cmd

    def __enter__(self):
        super().__enter__()
        warnings.simplefilter("always", QrobustWarning)
        seen: set[str] = set()
        before = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, QrobustWarning):
                return before(message, category, filename, lineno, file, line)
            if str(message) not in seen:
                seen.add(str(message))
                print(f"qrobust {self.cmd}: warning: {message}", file=sys.stderr)
        warnings.showwarning = show
        return self


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not a.cmd:
        parser.print_help()
        return 2
    try:
        with _warnings_as_lines(a.cmd):
            return COMMANDS[a.cmd](a)
    except QrobustError as e:
        print(f"qrobust {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qrobust {a.cmd}: interrupted; finished checkpoints and records are kept, re-run to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except PermissionError as e:
        print(f"qrobust {a.cmd}: error: permission denied: '{e.filename}'; choose a writable location",
              file=sys.stderr)
        return 2
    except OSError as e:
        where = f" '{e.filename}'" if e.filename else ""
        print(f"qrobust {a.cmd}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
