"""qrobust's training step vs a bare PyTorch loop: same model, batch, optimizer, threads (issue 17 goal: >= 0.95x).

qrobust's figure is the tokens/s its own meter records in the run manifest (every step but the first, batch
read + forward + backward + clip + AdamW; checkpoint writes excluded). The bare loop is the 30 lines below,
timed the same way. Repeats alternate the two; medians and their ratio are printed (and written with --json).

    python bench/bench_train_step.py [--preset tiny] [--steps 40] [--repeats 3] [--json bench/results/train_step.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import qrobust
from qrobust.data.blocks import pack_blocks
from qrobust.data.prepare import prepare_data
from qrobust.config import DataConfig
from qrobust.models import build_model


def config(out: str, preset: str, steps: int, batch: int) -> dict:
    return {"name": "bench", "out": out, "seed": 0, "steps": steps, "batch_size": batch, "checkpoint_every": steps,
            "data": {"corpus": "builtin", "max_chars": 1_000_000, "seq_len": 128, "tokenizer": "bpe"},
            "model": {"arch": "gpt_neox", "preset": preset}, "schedule": {"kind": "constant", "warmup_steps": 10}}


def qrobust_rate(tmp: Path, preset: str, steps: int, batch: int, i: int) -> float:
    out = tmp / f"q{i}"
    qrobust.train(config(str(out), preset, steps, batch), progress=False)
    return json.loads((out / "trajectory.json").read_text())["runs"]["main"]["throughput"]["tokens_per_s"]


def bare_rate(blocks: torch.Tensor, vocab: int, preset: str, steps: int, batch: int) -> float:
    """The 30-line loop: seeded shuffled batches, forward, backward, clip, AdamW."""
    model = build_model("gpt_neox", preset, vocab, 128, seed=0)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    order = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(0))
    model.train()
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        x = blocks[order[step * batch:(step + 1) * batch]]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        times.append(time.perf_counter() - t0)
    return batch * 128 * (steps - 1) / sum(times[1:])  # the first step left out, as qrobust's meter does


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    data = prepare_data(DataConfig(max_chars=1_000_000, seq_len=128))
    blocks = pack_blocks(data.train, 128)
    q, b = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            q.append(qrobust_rate(Path(tmp), a.preset, a.steps, a.batch, i))
            b.append(bare_rate(blocks, len(data.tokenizer), a.preset, a.steps, a.batch))
    res = {"date": time.strftime("%Y-%m-%d"), "preset": a.preset, "batch": a.batch, "seq_len": 128,
           "threads": torch.get_num_threads(), "qrobust_tokens_per_s": statistics.median(q),
           "bare_tokens_per_s": statistics.median(b), "ratio": statistics.median(q) / statistics.median(b),
           "qrobust_runs": q, "bare_runs": b}
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
