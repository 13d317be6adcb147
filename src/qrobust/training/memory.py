"""Memory per device of one training step, estimated from the architecture before any weight exists, for
DDP (every rank holds the whole model) and FSDP (states sharded over the world).

What is counted, in bytes:
- states: fp32 master weights 4 + gradients 4 + AdamW's two moments 8 = 16 B per parameter (÷ world under
  FSDP). DDP's gradient buckets, the CUDA context and allocator fragmentation are not counted: leave
  10-20 % headroom.
- autocast copies: under bf16/fp16 autocast every matmul weight is cast once per forward and kept for
  backward, 2 B per matmul parameter (÷ world under FSDP2 with a bf16 ``MixedPrecisionPolicy``).
- gathered (FSDP only): the all-gathered fp32 weights of two decoder layers (the one running and the one
  prefetched).
- activations of one micro batch: per token and layer 10·hidden + k·intermediate values (block and
  LayerNorm inputs, Q, K, V, attention output, the MLP's hidden: k = 2 for a GELU MLP, 4 for a gated SwiGLU
  one) at the activation width (2 B under autocast, 4 B in fp32), with fused attention (SDPA / flash), which
  keeps no seq_len × seq_len scores; plus the logits, their fp32 copy for the loss and its gradient
  (vocab × (2 + 8) B per token under autocast, vocab × 8 B in fp32). In fp32 this is within 6 % of the bytes
  autograd actually saves for backward (tiny and small presets, GPT-NeoX and Llama; tests/test_training_plan.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STATE_BYTES_PER_PARAM = 16  # fp32 weights + grads + AdamW exp_avg + exp_avg_sq


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one training step, by part."""

    states: int
    autocast_copies: int
    gathered: int
    activations: int

    @property
    def total(self) -> int:
        return self.states + self.autocast_copies + self.gathered + self.activations


def activation_width(precision: str) -> int:
    """Bytes per stored activation value: 2 under bf16/fp16 autocast, 4 in fp32."""
    return 4 if precision == "fp32" else 2


def mlp_factor(config: Any) -> int:
    """Intermediate-size values kept per token by the MLP: 2 for up→act, 4 for gated (gate, up, act, product)."""
    return 4 if getattr(config, "model_type", "") in ("llama", "mistral", "qwen2") else 2


def activation_bytes(config: Any, tokens: int, precision: str) -> int:
    """Activations one micro batch of ``tokens`` tokens keeps for backward (see the module's note)."""
    w = activation_width(precision)
    per_layer = w * (10 * config.hidden_size + mlp_factor(config) * config.intermediate_size)
    logits = config.vocab_size * (8 if precision == "fp32" else w + 8)
    return tokens * (config.num_hidden_layers * per_layer + logits)


def step_memory(config: Any, params: int, matmul_params: int, micro_tokens: int, precision: str,
                sharding: tuple[str, int]) -> MemoryEstimate:
    """Memory per device; ``sharding`` is ("ddp" | "fsdp", world size)."""
    strategy, world = sharding
    shards = world if strategy == "fsdp" else 1
    copies = 0 if precision == "fp32" else 2 * matmul_params // shards
    per_layer = (params - 2 * config.vocab_size * config.hidden_size) // config.num_hidden_layers
    gathered = 2 * 4 * per_layer if strategy == "fsdp" and world > 1 else 0
    return MemoryEstimate(states=STATE_BYTES_PER_PARAM * params // shards, autocast_copies=copies,
                          gathered=gathered, activations=activation_bytes(config, micro_tokens, precision))
