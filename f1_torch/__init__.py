"""F1 inference in PyTorch: loads an exported model directory and runs the policy.

Depends on torch, numpy and safetensors, plus the observation contract `f1_common.transforms`
(NumPy, Pillow, SentencePiece; no JAX). See docs/torch_runtime.md.
"""

from f1_common.model_config import F1Config, read_config
from f1_torch.loader import LoadError, load_model
from f1_torch.model import F1
from f1_torch.policy import TorchPolicy

__all__ = ["F1", "F1Config", "LoadError", "TorchPolicy", "load_model", "read_config"]
