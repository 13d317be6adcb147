"""The names of the files qrobust keeps beside a checkpoint's weights: one place, so readers and writers
agree (a training-state file is never a model tensor file, never averaged, never fingerprinted)."""
from __future__ import annotations

STATE_FILE = "qrobust_state.json"  # step, data config, optimizer groups, averaging state of a checkpoint
OPTIMIZER_FILE = "optimizer.safetensors"
AVERAGING_FILE = "averaging.safetensors"
MASTER_FILE = "master_weights.safetensors"  # fp32 weights for exact resume when save_dtype is not float32
STATE_TENSOR_FILES = (OPTIMIZER_FILE, AVERAGING_FILE, MASTER_FILE)
