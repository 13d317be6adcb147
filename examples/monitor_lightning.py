"""Lightning with qrobust's live PTQ-robustness monitor: a micro GPT-NeoX inside a ``LightningModule``, trained on
qrobust's built-in corpus (offline, CPU, well under a minute), its FP and 3/4-bit RTN (group 32) loss every 20
steps.

    python examples/monitor_lightning.py --out /tmp/pl-monitor

prints one ``monitor step ...`` line per evaluation; the step log is ``<out>/logs/monitor.jsonl`` and the
metrics also go through ``pl_module.log_dict`` to the Trainer's loggers. The one line for any Lightning run:

    Trainer(callbacks=[QrobustLightningCallback(make_monitor({"every": 100, "bits": [3, 4]}, eval_blocks))])
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
from monitor_hf_trainer import MONITOR, tiny_setup  # noqa: E402 - the same micro model, data and monitor settings


def lm_module(model: torch.nn.Module, lr: float, steps: int) -> Any:
    """A minimal LightningModule around an HF causal LM (the model sits at ``.model``), AdamW + cosine decay."""
    import lightning.pytorch as pl

    class CausalLM(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.train()  # qrobust builds models in eval mode; Lightning leaves modes as found

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            loss = self.model(input_ids=batch, labels=batch).loss
            self.log("train/loss", loss, on_step=True, prog_bar=False)
            return loss

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.model.parameters(), lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return CausalLM()


def main(argv: list[str] | None = None, make: Callable[..., Any] | None = None) -> Any:
    """Train and return the ``Trainer``; ``make(cfg, eval_blocks)`` builds the monitor (default: qrobust's)."""
    import lightning.pytorch as pl

    from qrobust.integrations import QrobustLightningCallback, make_monitor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="pl-monitor-out")
    p.add_argument("--steps", type=int, default=60)
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # a micro model: one thread is fastest, and kind to a shared machine
    pl.seed_everything(0, verbose=False)
    model, train_blocks, eval_blocks = tiny_setup()
    monitor = (make or make_monitor)(MONITOR, eval_blocks)
    loader = torch.utils.data.DataLoader(train_blocks, batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    trainer = pl.Trainer(accelerator="cpu", max_steps=a.steps, default_root_dir=a.out, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         deterministic=True, callbacks=[QrobustLightningCallback(monitor)])
    trainer.fit(lm_module(model, 3e-3, a.steps), loader)
    print(f"monitor log: {Path(a.out) / 'logs' / 'monitor.jsonl'}")
    return trainer


if __name__ == "__main__":
    main()
