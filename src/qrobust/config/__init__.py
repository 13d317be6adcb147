"""Typed, validated configuration for training and sweeps, by topic: ``base`` (the strict model and one-line
errors), ``train``, ``sweep``, ``yaml_files``. Every config is a pydantic model with ``extra="forbid"``:
an unknown key or a wrong type becomes one :class:`~qrobust.errors.ConfigError` line naming the key."""
from .base import M, Strict, format_validation_error, parse_config
from .monitor import AlertRule, MonitorConfig
from .sweep import (MAX_BITS, MIN_BITS, AverageConfig, CalibrationConfig, EvalConfig, GeometryConfig, SweepConfig,
                    TasksConfig, bits_problem, group_size_problem)
from .train import (EXECUTION_FIELDS, BranchConfig, DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainAverageConfig,
                    TrainConfig)
from .yaml_files import UniqueKeyLoader, load_config, load_yaml, parse_yaml

__all__ = ["EXECUTION_FIELDS", "MAX_BITS", "MIN_BITS", "AlertRule", "AverageConfig", "BranchConfig", "CalibrationConfig", "DataConfig", "EvalConfig",
           "GeometryConfig", "M", "ModelConfig", "MonitorConfig", "OptimConfig", "ScheduleConfig", "Strict", "SweepConfig",
           "TasksConfig", "TrainAverageConfig", "TrainConfig", "UniqueKeyLoader", "bits_problem",
           "format_validation_error", "group_size_problem", "load_config", "load_yaml", "parse_config",
           "parse_yaml"]
