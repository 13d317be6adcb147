"""The measuring half of bench/gpu_check.sh (which writes the configs and runs the steps).

  python bench/gpu_check.py measure OUT.json -- qrobust CLI args...   run one qrobust command in this process
      and write its wall time, exit status and CUDA peak memory (torch.cuda.max_memory_allocated) to OUT.json
  python bench/gpu_check.py check-configs DIR    parse DIR/train.yaml and DIR/sweep.yaml (works on CPU)
  python bench/gpu_check.py report DIR [--json FILE]   print tokens/s, MFU, GPTQ seconds per block and peak
      memory from what the steps left in DIR

Training tokens/s is timed between the first and the last checkpoint of the main run (their saved wall
times), so the tokenizer, the start-up and torch.compile's first steps are not in it. MFU uses the model
FLOPs per token of qrobust.training.flops (PaLM's convention) and the peak table's bf16 rate of the device.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path


def measure(out: Path, argv: list[str]) -> int:
    import torch

    from qrobust.cli import main
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else None
    out.write_text(json.dumps({"argv": argv, "rc": rc, "seconds": seconds, "peak_memory_bytes": peak,
                               "device": torch.cuda.get_device_name() if cuda else "cpu"}, indent=1))
    return rc


def check_configs(folder: Path) -> int:
    from qrobust.config import SweepConfig, TrainConfig, load_yaml, parse_config
    train = parse_config(TrainConfig, load_yaml(folder / "train.yaml"), "train.yaml")
    sweep = parse_config(SweepConfig, load_yaml(folder / "sweep.yaml"), "sweep.yaml")
    print(f"configs parse: train {train.model.preset} {train.precision} compile={train.compile} on {train.device}, "
          f"{train.steps} steps; sweep {sweep.methods} w{sweep.bits} on {sweep.device}")
    return 0


def training_speed(folder: Path) -> tuple[float, float | None, str]:
    """(tokens/s between the first and last main checkpoints, MFU, device name)."""
    from qrobust.config import TrainConfig, load_yaml, parse_config
    from qrobust.models import model_config
    from qrobust.training.flops import flops_per_token, meta_model, peak_flops
    cfg = parse_config(TrainConfig, load_yaml(folder / "train.yaml"), "train.yaml")
    states = [json.loads(p.read_text()) for p in
              sorted((folder / "run" / "checkpoints" / "main").glob("step-*/qrobust_state.json"))]
    first, last = states[0], states[-1]
    tokens_per_s = (last["tokens"] - first["tokens"]) / (last["time"] - first["time"])
    vocab = json.loads(next((folder / "run" / "checkpoints" / "main").glob("step-*/config.json")).read_text())
    cls, config = model_config(cfg.model.arch, cfg.model.preset, vocab["vocab_size"], cfg.data.seq_len)
    flops = flops_per_token(meta_model(cls, config), config, cfg.data.seq_len)
    device = json.loads((folder / "train.measure.json").read_text())["device"]
    peak = peak_flops(device, cfg.precision, cfg.peak_tflops)
    return tokens_per_s, (tokens_per_s * flops.training / peak if peak else None), device


def report(folder: Path, json_out: Path | None) -> int:
    tokens_per_s, mfu, device = training_speed(folder)
    runs = {k: json.loads((folder / f"{k}.measure.json").read_text()) for k in ("train", "sweep", "eval")}
    ev = json.loads((folder / "eval.json").read_text())
    result = {"date": time.strftime("%Y-%m-%d"), "device": device, "train_tokens_per_s": tokens_per_s, "mfu": mfu,
              "gptq_seconds_per_block": ev.get("block_seconds_median"), "dq_rel_w4": ev.get("dq_rel"),
              "seconds": {k: r["seconds"] for k, r in runs.items()},
              "peak_memory_gib": {k: None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**30
                                  for k, r in runs.items()}}
    mfu_text = f"{100 * mfu:.1f} %" if mfu is not None else "n/a (device not in the peak table)"
    print(f"gpu_check on {device} ({result['date']})\n"
          f"  training: {tokens_per_s:,.0f} tokens/s, MFU {mfu_text}\n"
          f"  streamed GPTQ w4: {result['gptq_seconds_per_block']:.3f} s per block (median), ΔQ L "
          f"{100 * (result['dq_rel_w4'] or 0):+.3f} %\n"
          "  wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()) + "\n"
          "  peak CUDA memory (GiB): " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}"
                                                    for k, v in result["peak_memory_gib"].items()))
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))
    return 0


def main_(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("out", type=Path)
    m.add_argument("qrobust_args", nargs=argparse.REMAINDER)
    c = sub.add_parser("check-configs")
    c.add_argument("folder", type=Path)
    r = sub.add_parser("report")
    r.add_argument("folder", type=Path)
    r.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.cmd == "measure":
        args = a.qrobust_args[1:] if a.qrobust_args[:1] == ["--"] else a.qrobust_args
        return measure(a.out, args)
    if a.cmd == "check-configs":
        return check_configs(a.folder)
    return report(a.folder, a.json)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main_(sys.argv[1:]))
