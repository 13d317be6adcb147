"""Model FLOPs per token from the architecture, and the peak dense FLOP/s of known accelerators: the two
halves of MFU (model FLOPs utilisation) and of the planner's GPU-hour estimates.

Convention (PaLM, Chowdhery et al. 2022, appendix B): a forward pass costs 2 FLOPs per matmul parameter per
token (every ``nn.Linear`` of every layer plus the LM head; embedding lookups, norms, biases, rotary and
softmax are not counted) plus attention's two matmuls (QKᵀ and AV), 2 × 2 × n_layers × seq_len × d_attn per
token with d_attn = heads × head_dim, counted over the FULL seq_len × seq_len square, not halved for the
causal mask (what dense kernels compute, and what ``torch.utils.flop_counter`` counts). Training is
3 × forward (backward = 2 × forward), so training = 6·N + 12·L·H·Q·T, PaLM's formula."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class FlopsPerToken:
    """FLOPs per token of one sequence of ``seq_len`` tokens, split into its parts."""

    seq_len: int
    layer_matmul_params: int  # weights of every nn.Linear inside the decoder layers
    head_params: int  # the LM head (hidden × vocab)
    attention: int  # forward QKᵀ + AV per token, full (non-causal) convention

    @property
    def matmul_params(self) -> int:
        return self.layer_matmul_params + self.head_params

    @property
    def forward(self) -> int:
        return 2 * self.matmul_params + self.attention

    @property
    def training(self) -> int:
        """Forward + backward (2 × forward): 6·N + 12·L·d_attn·T."""
        return 3 * self.forward


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a model; ``non_embedding`` leaves out the input embedding and the (untied) LM head, as
    the Pythia suite counts them."""

    total: int
    embedding: int  # input embedding + LM head (once when tied)

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def meta_model(model_cls: type, config: Any) -> nn.Module:
    """The model built on the meta device: shapes without memory or initialisation time."""
    with torch.device("meta"):
        return model_cls(config)


def param_counts(model: nn.Module) -> ParamCounts:
    """Total parameters and the embedding part (input and output embeddings, each counted once)."""
    total = sum(p.numel() for p in model.parameters())
    emb = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
           if m is not None}
    return ParamCounts(total=total, embedding=sum(emb.values()))


def attention_width(config: Any) -> int:
    """heads × head_dim: the width QKᵀ and AV run over (the hidden size unless ``head_dim`` is overridden)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads * head_dim


def flops_per_token(model: nn.Module, config: Any, seq_len: int) -> FlopsPerToken:
    """FLOPs per token of ``model`` (any decoder whose matmuls are ``nn.Linear``; a meta model is enough)
    trained on sequences of ``seq_len`` tokens."""
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not head]
    layer = sum(m.weight.numel() for m in linears)
    attention = 2 * 2 * config.num_hidden_layers * seq_len * attention_width(config)
    return FlopsPerToken(seq_len=seq_len, layer_matmul_params=layer, head_params=head.weight.numel(),
                         attention=attention)


# Peak dense (no 2:4 sparsity) tensor throughput per device, TFLOP/s, from the vendors' datasheets:
#   NVIDIA H100 datasheet (SXM5 / PCIe / NVL; the sparse figures halved), H200 datasheet (SXM = H100 SXM),
#   A100 datasheet (40 and 80 GB, SXM and PCIe alike), L40S / L40 / L4 / A10 / T4 product datasheets,
#   Ada GPU architecture whitepaper (GeForce RTX 4090: FP16/BF16 with FP32 accumulate, what autocast uses),
#   Tesla V100 datasheet (no BF16 or TF32 units), AMD Instinct MI300X / MI250X datasheets (matrix cores).
#   A10G (AWS G5) has no NVIDIA datasheet: its row is the commonly quoted approximation; set peak_tflops
#   in the config where an exact MFU matters.
# "fp32" is the plain FP32 rate (torch's default matmul precision "highest"); "tf32" needs
# torch.backends.cuda.matmul.allow_tf32 (or set_float32_matmul_precision("high")).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "GH200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "L40": {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
    "V100 SXM2": {"fp16": 125.0, "fp32": 15.7},
    "V100 PCIe": {"fp16": 112.0, "fp32": 14.0},
    "T4": {"fp16": 65.0, "fp32": 8.1},
    "MI300X": {"bf16": 1307.4, "fp16": 1307.4, "tf32": 653.7, "fp32": 163.4},
    "MI250X": {"bf16": 383.0, "fp16": 383.0, "fp32": 95.7},
}

# torch.cuda.get_device_name strings ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Tesla V100-PCIE-16GB",
# "AMD Instinct MI300X", ...) -> table row; the first pattern that matches wins, so variants come first
DEVICE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"GH200", "GH200"), (r"H200.*NVL", "H200 NVL"), (r"H200", "H200"),
    (r"H100.*PCIE", "H100 PCIe"), (r"H100.*NVL", "H100 NVL"), (r"H100|H800", "H100 SXM"),
    (r"A100|A800", "A100"), (r"L40S", "L40S"), (r"L40\b", "L40"), (r"\bL4\b", "L4"),
    (r"A10G", "A10G"), (r"\bA10\b", "A10"), (r"RTX 4090", "RTX 4090"),
    (r"V100.*PCIE", "V100 PCIe"), (r"V100", "V100 SXM2"), (r"\bT4\b", "T4"),
    (r"MI300X", "MI300X"), (r"MI250X?", "MI250X"),
)

# a training precision (TrainConfig.precision) -> the matmul rate it runs at
PRECISION_RATES = {"bf16-mixed": "bf16", "fp16-mixed": "fp16", "fp32": "fp32",
                   "bf16": "bf16", "fp16": "fp16", "tf32": "tf32"}


def known_device(device_name: str) -> str | None:
    """The table row of a device name (``torch.cuda.get_device_name``), or None when it is not known."""
    upper = device_name.upper()
    for pattern, row in DEVICE_PATTERNS:
        if re.search(pattern, upper):
            return row
    return None


def peak_flops(device_name: str, precision: str, override_tflops: float | None = None) -> float | None:
    """Peak dense FLOP/s of one device at a precision (``bf16-mixed``, ``fp32``, ``tf32``, ...).

    ``override_tflops`` (a config's ``peak_tflops``) wins; otherwise the table. None for a CPU, an unknown
    device or a precision the device has no units for: MFU is then not reported rather than made up."""
    if override_tflops is not None:
        return override_tflops * 1e12
    row = known_device(device_name)
    rate = PRECISION_RATES.get(precision)
    if row is None or rate is None:
        return None
    tflops = PEAK_TFLOPS[row].get(rate)
    return None if tflops is None else tflops * 1e12


def device_name(device: torch.device | str) -> str:
    """What ``peak_flops`` matches: the CUDA device's name, or "cpu"."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return device.type


def mfu(tokens_per_second: float, flops: FlopsPerToken, peak: float | None, world_size: int = 1) -> float | None:
    """Model FLOPs utilisation of ``world_size`` devices together processing ``tokens_per_second``."""
    if not peak:
        return None
    return tokens_per_second * flops.training / (peak * world_size)
