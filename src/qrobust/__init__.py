"""qrobust: how robust are language-model checkpoints to post-training quantization, along training?"""
__version__ = "0.1.0"
