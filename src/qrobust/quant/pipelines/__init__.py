"""Pipelines drive a quantizer over a model: in memory (the whole model loaded) or layer-streamed (one
decoder block at a time from safetensors). They follow the quantizer contract and never name a method."""
