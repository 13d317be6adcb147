"""The arguments of each command (``qrobust COMMAND --help``); ``sweep``'s live with its command in
:mod:`.sweep`. Value checks come from :mod:`.args`."""
from __future__ import annotations

import argparse
from pathlib import Path

from .args import add_device_args, add_format_arg, add_load_args, add_quant_args, positive, positive_float
from .train_tools import add_train_planning_args


def add_demo(sub) -> None:
    """The ``demo`` command's arguments."""
    p = sub.add_parser("demo", help="offline end-to-end demo: train, branch, quantize, evaluate, report")
    p.add_argument("--quick", action="store_true", help="a ~1 minute version (micro model, few steps)")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--threads", type=positive, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_reproduce(sub) -> None:
    """The ``reproduce`` command's arguments."""
    p = sub.add_parser("reproduce", help="the paper's controlled experiments at CPU scale, with verdicts from the data",
                       description="Train, sweep and judge one or more experiments: f2 (cooldowns at several "
                                   "token budgets), f3 (peak LR at equal FP loss), f4 (LAWA vs LR decay), wd "
                                   "(weight decay on/off), formats (F2 and F4 per number format), scaling (tokens per "
                                   "parameter vs LR decay across model sizes), all, or a YAML "
                                   "file of the same shape (experiments/reproduce/). Re-running resumes; shared runs are trained once.")
    p.add_argument("experiments", nargs="+", metavar="NAME", help="f2, f3, f4, wd, formats, scaling, all, or a YAML path")
    p.add_argument("--out", default="reproduce-out", help="output folder (default: reproduce-out)")
    p.add_argument("--scale", type=positive_float, default=1.0,
                   help="multiply every step count (token budget, checkpoint spacing, warmup, decays); default 1")
    p.add_argument("--model", default=None, metavar="PRESET",
                   help="model preset instead of the experiments' (e.g. pythia-14m, pythia-160m); scaling: "
                        "replaces its largest size only")
    p.add_argument("--seeds", type=positive, default=None, metavar="N",
                   help="train every run with N seeds (init and data order: seed, seed+1, ...; calibration seed too) "
                        "and pool the verdicts over them; finished seeds are reused (default: the file's, 1)")
    p.add_argument("--jobs", type=positive, default=1, metavar="N",
                   help="train and sweep N run folders at once in worker processes, --threads (default 1) "
                        "threads each; faster on a few cores for small models (default 1: in this process)")
    p.add_argument("--threads", type=positive, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_train(sub) -> None:
    """The ``train`` command's arguments."""
    p = sub.add_parser("train", help="train a trajectory (main run + cooldown branches) from a YAML config",
                       description="Train the main run and its cooldown branches; re-running resumes exactly. "
                                   "Config keys: name, out, seed, steps, batch_size, checkpoint_every, data.*, "
                                   "model.*, optim.*, schedule.*, branches[], averaging[] (see README / experiments/).")
    p.add_argument("config", help="YAML training config (e.g. experiments/cooldown_tiny.yaml)")
    p.add_argument("--out", default=None, help="run folder (overrides the config's 'out')")
    p.add_argument("--steps", type=positive, default=None, help="override 'steps'")
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the Python code of a tokenizer folder named in data.tokenizer")
    p.add_argument("--quiet", action="store_true")
    add_torchrun(p)
    add_train_planning_args(p)


def add_torchrun(p) -> None:
    """``--nproc`` and the torchrun flags it passes through (several nodes)."""
    g = p.add_argument_group("distributed (launches torchrun; same as `torchrun --nproc-per-node N -m qrobust train`)")
    g.add_argument("--nproc", type=positive, default=None, help="processes per node (DDP, or FSDP2 with distributed: fsdp)")
    for flag in ("--nnodes", "--node-rank", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--master-addr",
                 "--master-port"):
        g.add_argument(flag, default=None, help=argparse.SUPPRESS)


def add_quantize(sub) -> None:
    """The ``quantize`` command's arguments."""
    p = sub.add_parser("quantize", help="fake-quantize one checkpoint and save it (dequantized weights)")
    p.add_argument("checkpoint", help="Hugging Face model folder")
    p.add_argument("--out", required=True, help="folder for the quantized checkpoint")
    add_quant_args(p, bits_required=False)
    add_format_arg(p)
    add_load_args(p)
    add_device_args(p)
    p.add_argument("--json", action="store_true", help="print the per-layer report as JSON")


def add_export(sub) -> None:
    """The ``export`` command's arguments."""
    p = sub.add_parser("export", help="quantize a checkpoint and write it as compressed-tensors (loads in transformers)",
                       description="Quantize (RTN or GPTQ, symmetric grid) and write codes + scales in a "
                                   "compressed-tensors format (pack-quantized integers, float-quantized FP8, "
                                   "nvfp4-pack-quantized, MX), which transformers loads with the "
                                   "compressed-tensors package installed, without qrobust.")
    p.add_argument("checkpoint", help="Hugging Face model folder")
    p.add_argument("--out", required=True, help="folder for the exported checkpoint")
    p.add_argument("--verify", type=positive, default=None, metavar="N_BLOCKS",
                   help="reload the export with transformers and compare its loss on N eval blocks")
    add_quant_args(p, bits_required=False)
    add_format_arg(p)  # written in the format's compressed-tensors layout (nvfp4, fp8-e4m3-channel, mxfp4, …)
    add_load_args(p)
    add_device_args(p)


def add_eval(sub) -> None:
    """The ``eval`` command's arguments."""
    p = sub.add_parser("eval", help="validation loss of a checkpoint, FP and (with --bits) quantized")
    p.add_argument("checkpoint")
    p.add_argument("--corpus", default=None, help="corpus spec (default: the checkpoint's training corpus)")
    p.add_argument("--field", default=None, help="text field for jsonl / HF datasets")
    p.add_argument("--split", choices=["val", "train", "all"], default="val")
    p.add_argument("--n-blocks", type=positive, default=64)
    p.add_argument("--seq-len", type=positive, default=None)
    p.add_argument("--batch-size", type=positive, default=8)
    add_quant_args(p, bits_required=False)
    add_format_arg(p)
    add_load_args(p)
    add_device_args(p)
    p.add_argument("--tasks", action="append", default=None,
                   help="downstream task (builtin-nextline[:N], jsonl:PATH, preset:paper12, an lm-eval task); "
                        "repeatable; needs pip install 'qrobust[tasks]'")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--limit", type=positive, default=None, help="items per task")
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


def add_sharpness(sub) -> None:
    """The ``sharpness`` command's arguments."""
    p = sub.add_parser("sharpness", help="Hessian λmax and trace, per-layer sharpness, weight statistics of a checkpoint",
                       description="Curvature of the mean token loss over the first N eval blocks: top eigenvalues "
                                   "by Lanczos (with residuals), trace by Hutch++ (95%% interval).")
    p.add_argument("checkpoint")
    p.add_argument("--top-k", type=positive, default=1, help="eigenvalues to report (default 1)")
    p.add_argument("--iters", type=positive, default=20, help="Lanczos steps / power iterations (default 20)")
    p.add_argument("--method", choices=["lanczos", "power"], default="lanczos")
    p.add_argument("--trace", choices=["hutch++", "hutchinson", "none"], default="hutch++")
    p.add_argument("--trace-matvecs", type=positive, default=30, help="Hessian products for the trace (default 30)")
    p.add_argument("--params", action="append", default=None,
                   help="parameter glob, or 'linear' (quantized linears' weights); repeatable (default: all)")
    p.add_argument("--per-layer", action="store_true", help="also λmax of each quantized linear alone")
    p.add_argument("--n-blocks", type=positive, default=8)
    p.add_argument("--seq-len", type=positive, default=None)
    p.add_argument("--batch-size", type=positive, default=8)
    p.add_argument("--corpus", default=None, help="corpus spec (default: the checkpoint's training corpus)")
    p.add_argument("--split", choices=["val", "train", "all"], default="val")
    p.add_argument("--seed", type=int, default=0)
    add_load_args(p)
    p.add_argument("--json", action="store_true", help="print everything as JSON")


def add_landscape(sub) -> None:
    """The ``landscape`` command's arguments."""
    p = sub.add_parser("landscape", help="trajectory PCA and a 2-D loss landscape (PCA plane or random directions)",
                       description="Exact PCA of the checkpoints (Gram matrix, streamed from safetensors) and the eval "
                                   "loss on a grid; writes OUT/landscape.json, landscape_<plane>.png and "
                                   "pca_projection.png.")
    p.add_argument("source", help="trajectory source (run folder, folders:GLOB, hf:..., preset:...)")
    p.add_argument("--out", required=True)
    p.add_argument("--plane", choices=["pca", "random"], default="pca")
    p.add_argument("--run", action="append", default=None, help="only these runs, repeatable (default: all)")
    p.add_argument("--grid", type=positive, default=11, help="points per side (default 11)")
    p.add_argument("--margin", type=float, default=0.25, help="pca: grid margin beyond the checkpoints (0.25)")
    p.add_argument("--span", type=float, default=1.0, help="random: grid half-width in filter-norm units (1.0)")
    p.add_argument("--center", default=None, help="random: checkpoint name at the centre (default: the last)")
    p.add_argument("--params", action="append", default=None, help="tensor glob(s) the plane moves (default all)")
    p.add_argument("--n-blocks", type=positive, default=8)
    p.add_argument("--seq-len", type=positive, default=None)
    p.add_argument("--batch-size", type=positive, default=8)
    p.add_argument("--seed", type=int, default=0)
    add_load_args(p)
    p.add_argument("--quiet", action="store_true")


def add_report(sub) -> None:
    """The ``report`` command's arguments."""
    p = sub.add_parser("report", help="figures + self-contained HTML for a results folder")
    p.add_argument("results")
    p.add_argument("--out", default=None, help="report folder (default: RESULTS/report)")


def add_results(sub) -> None:
    """The ``results`` command's arguments."""
    p = sub.add_parser("results", help="print or export the records of a results folder")
    p.add_argument("results")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table",
                   help="parquet needs --out and pyarrow (installed with datasets)")
    p.add_argument("--out", default=None, help="write to this file instead of stdout")


def add_average(sub) -> None:
    """The ``average`` command's arguments."""
    p = sub.add_parser("average", help="weight averaging: LAWA / EMA along a trajectory, uniform or greedy soups",
                       description="Writes averaged checkpoints (streamed from safetensors, fp32 accumulation) and "
                                   "OUT/trajectory.json holding the original and the averaged runs: sweep it like any "
                                   "trajectory.")
    p.add_argument("averager", choices=["lawa", "ema", "soup", "greedy-soup"])
    p.add_argument("sources", nargs="+", help="trajectory source(s); soups use the last checkpoint of every run")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--window", type=positive, default=5, help="LAWA: checkpoints per mean (default 5)")
    p.add_argument("--stride", type=positive, default=1, help="LAWA: take every STRIDE-th checkpoint (default 1)")
    p.add_argument("--beta", type=float, default=0.9, help="EMA decay per checkpoint (default 0.9)")
    p.add_argument("--run", action="append", default=None, help="only these runs (LAWA / EMA), repeatable")
    p.add_argument("--n-blocks", type=positive, default=64, help="greedy soup: held-out blocks (default 64)")
    p.add_argument("--corpus", default=None, help="greedy soup: held-out corpus spec (default: the training corpus; "
                                                  "needed for checkpoints qrobust did not train)")
    p.add_argument("--seq-len", type=positive, default=None,
                   help="greedy soup: tokens per held-out block (default: the training length, else 128)")
    add_load_args(p)
    p.add_argument("--quiet", action="store_true")


def add_trajectory(sub) -> None:
    """The ``trajectory`` command's arguments."""
    p = sub.add_parser("trajectory", help="inspect trajectory sources")
    tsub = p.add_subparsers(dest="tcmd", metavar="ACTION", required=True)
    t = tsub.add_parser("list", help="the checkpoints a source resolves to (nothing is downloaded)",
                        description="SOURCE: a run folder, a model folder, folders:GLOB, hf:ORG/NAME[@REV1,REV2], "
                                    "preset:NAME (see --presets); append ?every=N, ?steps=A,B, ?max=N or ?run=NAME")
    t.add_argument("source", nargs="?", default=None)
    t.add_argument("--step-pattern", default=None, help="regex whose first group is the step (folder sources)")
    t.add_argument("--presets", action="store_true", help="list the open-model presets instead")
    t.add_argument("--json", action="store_true", help="print the trajectory as JSON")


def add_data(sub) -> None:
    """The ``data`` command group's arguments (``data prepare``)."""
    p = sub.add_parser("data", help="prepare training data: tokenize a corpus into token shards on disk")
    dsub = p.add_subparsers(dest="dcmd", metavar="ACTION", required=True)
    d = dsub.add_parser("prepare", help="tokenize a corpus into token shards on disk (train with data.shards)",
                        description="CORPUS_SPEC: builtin, text:PATH, jsonl:PATH, parquet:PATH, hf-disk:PATH[#SPLIT], "
                                    "hf:NAME[:CONFIG][:SPLIT]. Splits train/val by document exactly as training "
                                    "does; re-running resumes; a folder made with other settings is refused.")
    d.add_argument("corpus", metavar="CORPUS_SPEC")
    d.add_argument("--out", required=True, help="shard folder to write")
    d.add_argument("--tokenizer", default="bpe", help="bpe (trained on the train documents), byte, or a folder")
    d.add_argument("--vocab-size", type=positive, default=2048, help="bpe vocabulary size (default 2048)")
    d.add_argument("--tokenizer-chars", type=positive, default=None,
                   help="bpe: train on at most this many characters of the train documents (default: all)")
    d.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out (default 0.05)")
    d.add_argument("--seed", type=int, default=0, help="seed of the document split (default 0)")
    d.add_argument("--field", default=None, help="text field of jsonl / parquet / HF datasets (default text)")
    d.add_argument("--max-chars", type=positive, default=4_000_000,
                   help="read at most this many characters (default 4000000, as training's data.max_chars)")
    d.add_argument("--all-chars", action="store_true", help="read the whole corpus (no --max-chars cap)")
    d.add_argument("--num-proc", type=positive, default=1, help="tokenizer worker processes (default 1)")
    d.add_argument("--shard-tokens", type=positive, default=None, help="tokens per file (default 33554432)")
    d.add_argument("--trust-remote-code", action="store_true", help="allow the Python code of a tokenizer folder")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
