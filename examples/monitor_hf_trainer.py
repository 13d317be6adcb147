"""Hugging Face ``Trainer`` with qrobust's live PTQ-robustness monitor: a micro GPT-NeoX trained on qrobust's
built-in corpus (offline, CPU, well under a minute), its FP and 3/4-bit RTN (group 32) loss every 20 steps.

    python examples/monitor_hf_trainer.py --out /tmp/hf-monitor

prints one ``monitor step ...`` line per evaluation; the step log is ``<out>/logs/monitor.jsonl`` and the
same metrics are in ``trainer.state.log_history``. The one line that adds the monitor to any HF run:

    trainer.add_callback(QrobustTrainerCallback(make_monitor({"every": 100, "bits": [3, 4]}, eval_blocks)))
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEQ_LEN, EVAL_BLOCKS = 64, 16
MONITOR = {"every": 20, "n_blocks": EVAL_BLOCKS, "batch_size": 8, "bits": [3, 4], "group_size": 32}


class Blocks(torch.utils.data.Dataset):
    """Token blocks as the causal-LM examples HF's Trainer feeds the model (labels = inputs)."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def tiny_setup() -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(a fresh micro GPT-NeoX, training blocks, held-out monitor blocks) from the built-in corpus."""
    from qrobust.config import DataConfig
    from qrobust.data import pack_blocks, take_blocks
    from qrobust.data.prepare import prepare_data
    from qrobust.models import build_model

    data = prepare_data(DataConfig(corpus="builtin", max_chars=400_000, val_fraction=0.2, seq_len=SEQ_LEN,
                                    vocab_size=512))
    model = build_model("gpt_neox", "micro", vocab_size=len(data.tokenizer), max_positions=SEQ_LEN, seed=0)
    return model, pack_blocks(data.train, SEQ_LEN), take_blocks(pack_blocks(data.val, SEQ_LEN), EVAL_BLOCKS)


def main(argv: list[str] | None = None, make: Callable[..., Any] | None = None) -> Any:
    """Train and return the ``Trainer``; ``make(cfg, eval_blocks)`` builds the monitor (default: qrobust's)."""
    from transformers import Trainer, TrainingArguments

    from qrobust.integrations import QrobustTrainerCallback, make_monitor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="hf-monitor-out")
    p.add_argument("--steps", type=int, default=60)
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # a micro model: one thread is fastest, and kind to a shared machine
    model, train_blocks, eval_blocks = tiny_setup()
    monitor = (make or make_monitor)(MONITOR, eval_blocks)
    args = TrainingArguments(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=8, learning_rate=3e-3,
                             warmup_steps=5, lr_scheduler_type="cosine", use_cpu=True, report_to=[],
                             save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(train_blocks),
                      callbacks=[QrobustTrainerCallback(monitor)])
    trainer.train()
    print(f"monitor log: {Path(a.out) / 'logs' / 'monitor.jsonl'}")
    return trainer


if __name__ == "__main__":
    main()
