"""CPU-scale reproductions of the paper's controlled experiments, with verdicts computed from the data."""
from . import scaling  # noqa: F401  registers the 'scaling' verdict kind
from .run import reproduce, reproduce_one
from .spec import builtin_names, load_spec

__all__ = ["builtin_names", "load_spec", "reproduce", "reproduce_one"]
