"""Layer streaming: quantize and evaluate a checkpoint one decoder block at a time, for models beyond
RAM or VRAM (weights read from safetensors per block, hidden states carried on device, CPU or disk)."""
from .hidden_states import HiddenStates, choose_tier
from .stream import (STREAMABLE_METHODS, StreamedResult, StreamedRun, VariantLosses, check_streamable, describe,
                     stream_checkpoint, streamed_losses)
from .block_weights import WeightSource

__all__ = ["HiddenStates", "STREAMABLE_METHODS", "StreamedResult", "StreamedRun", "VariantLosses", "WeightSource",
           "check_streamable", "choose_tier", "describe", "stream_checkpoint", "streamed_losses"]
