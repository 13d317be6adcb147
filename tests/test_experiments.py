"""Every shipped experiment config parses (a typo in one would only show on a user's machine)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qrobust.config import SweepConfig, TrainConfig, parse_config

EXPERIMENTS = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_experiment_config_parses(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    cls = SweepConfig if "trajectory" in data else TrainConfig
    parse_config(cls, data, path.name)


def test_demo_averaged_is_the_demo_plus_averaging() -> None:
    """F4's comparison relies on the averaged run's raw weights being the demo's own."""
    from qrobust.workflows.demo import FULL
    path = Path(__file__).parent.parent / "experiments" / "demo_averaged.yaml"
    mine = parse_config(TrainConfig, yaml.safe_load(path.read_text())).model_dump(exclude={"out", "averaging"})
    assert mine == parse_config(TrainConfig, FULL).model_dump(exclude={"out", "averaging"})
    assert len(EXPERIMENTS) >= 5
