"""experiments/paper/: every file is a valid training config at the paper's sizes, and --plan runs on it."""
from __future__ import annotations

from pathlib import Path

import pytest

from qrobust.cli import main
from qrobust.config import TrainConfig, load_yaml, parse_config
from qrobust.training.planning import plan_training

PAPER = Path(__file__).parents[1] / "experiments" / "paper"
FILES = sorted(PAPER.glob("*.yaml"))
TOKENS_PER_STEP = 256 * 2048


def _cfg(path: Path) -> TrainConfig:
    return parse_config(TrainConfig, load_yaml(path), str(path))


def test_the_setups_are_there():
    assert {p.name for p in FILES} == {"f2_token_budgets.yaml", "f3_lr_3e-4.yaml", "f3_lr_1e-3.yaml",
                                       "f3_lr_3e-3.yaml", "f3_lr_1e-2.yaml", "wd_off.yaml", "f4_lawa.yaml"}
    assert {_cfg(p).optim.lr for p in FILES if p.name.startswith("f3_")} == {3e-4, 1e-3, 3e-3, 1e-2}
    assert _cfg(PAPER / "wd_off.yaml").optim.weight_decay == 0.0


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_parses_at_paper_scale(path):
    cfg = _cfg(path)
    assert (cfg.model.arch, cfg.model.preset, cfg.data.seq_len) == ("gpt_neox", "pythia-160m", 2048)
    assert (cfg.device, cfg.precision, cfg.compile) == ("cuda", "bf16-mixed", True)
    assert cfg.data.shards and cfg.micro_batch_size == 16
    ends = [cfg.steps] + [b.from_step + b.decay_steps for b in cfg.branches]
    assert max(ends) * TOKENS_PER_STEP == pytest.approx(100e9, rel=0.01)  # every setup reaches ~100 B tokens
    decays = [b.decay_steps / (b.from_step + b.decay_steps) for b in cfg.branches]
    if cfg.schedule.decay_steps:
        decays.append(cfg.schedule.decay_steps / cfg.steps)
    assert decays and all(d == pytest.approx(0.2) for d in decays)  # WSD's 20 % cooldown


def test_f2_budgets():
    cfg = _cfg(PAPER / "f2_token_budgets.yaml")
    budgets = [(b.from_step + b.decay_steps) * TOKENS_PER_STEP / 1e9 for b in cfg.branches]
    assert [round(b) for b in budgets] == [16, 33, 49, 66, 82, 100]  # the paper's 16, 33, 49, 65, 82, 100 B


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_plan_runs(path, capsys):
    assert main(["train", str(path), "--plan", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    assert "162,322,944 (85,056,000 non-embedding)" in out and "micro 16 × grad_accum 2 × world 8" in out


def test_f2_plan_totals():
    plan = plan_training(_cfg(PAPER / "f2_token_budgets.yaml"), world_size=8)
    steps = 152_000 + 6_250 + 12_500 + 18_750 + 25_000 + 31_250 + 38_000
    assert plan.total_steps == steps and plan.total_tokens == steps * TOKENS_PER_STEP
    assert plan.total_flops == steps * TOKENS_PER_STEP * plan.flops_per_token.training
