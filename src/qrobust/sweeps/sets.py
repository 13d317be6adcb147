"""Evaluation, geometry and calibration block sets, built once per tokenizer: checkpoints of one run share them."""
from __future__ import annotations

import torch

from ..config import DataConfig, SweepConfig
from ..data.evalset import EvalSet, build_calibration, build_eval_set


class BlockSets:
    """The block sets of one sweep, cached by (tokenizer fingerprint, training data config)."""

    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        self.evals: dict[str, EvalSet] = {}
        self.geos: dict[str, EvalSet] = {}
        self.calibs: dict[tuple[str, int], tuple[torch.Tensor, dict]] = {}

    @staticmethod
    def cache_key(data_cfg: DataConfig | None, tok_fp: str) -> str:
        return f"{tok_fp}:{data_cfg.model_dump_json() if data_cfg else ''}"

    def known_id(self, data_cfg: DataConfig | None, tok_fp: str, geometry: bool = False) -> str | None:
        """The id of an eval (or geometry) block set already built for this tokenizer: no tokenizer load."""
        es = (self.geos if geometry else self.evals).get(self.cache_key(data_cfg, tok_fp))
        return es.id if es else None

    def eval_set(self, data_cfg: DataConfig | None, tok, tok_fp: str) -> EvalSet:
        k = self.cache_key(data_cfg, tok_fp)
        if k not in self.evals:
            self.evals[k] = build_eval_set(self.cfg.eval, data_cfg, tok, tok_fp)
        return self.evals[k]

    def geometry_set(self, data_cfg: DataConfig | None, tok, tok_fp: str) -> EvalSet | None:
        """The (smaller) block set curvature is measured on; None when the sweep measures no geometry."""
        if self.cfg.geometry is None:
            return None
        k = self.cache_key(data_cfg, tok_fp)
        if k not in self.geos:
            self.geos[k] = build_eval_set(self.cfg.geometry.eval_config(), data_cfg, tok, tok_fp)
        return self.geos[k]

    def calibration(self, data_cfg: DataConfig | None, tok, tok_fp: str, seq_len: int) -> tuple[torch.Tensor, dict]:
        k = (self.cache_key(data_cfg, tok_fp), seq_len)
        if k not in self.calibs:
            self.calibs[k] = build_calibration(self.cfg.calibration, data_cfg, tok, tok_fp, seq_len)
        return self.calibs[k]
