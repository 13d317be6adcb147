"""Layer streaming: quantize and evaluate a checkpoint one decoder block at a time, for models beyond
RAM or VRAM (weights read from safetensors per block, hidden states carried on device, CPU or disk)."""
from .hidden_states import HiddenStates, choose_tier
from .stream import (StreamSettings, StreamedResult, StreamedRun, VariantLosses, check_streamable, describe,
                     stream_checkpoint, streamable_methods, streamed_losses)
from .block_weights import WeightSource

__all__ = ["HiddenStates", "StreamSettings", "StreamedResult", "StreamedRun", "VariantLosses", "WeightSource",
           "check_streamable", "choose_tier", "describe", "stream_checkpoint", "streamable_methods", "streamed_losses"]
