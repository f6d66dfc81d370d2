"""The numerics the runtime offers, as the JAX model defines them (f1_jax/models/precision.py).

fp32: every weight and every operation in float32 (TF32 off on GPUs), for parity with f1_jax's
  `parity` precision.
bf16: the way the released model runs. bf16 weights and bf16 matmul inputs in the SigLIP tower +
  projector and in the three Gemma experts (their residual streams and KV cache are bf16 too).
  float32 everywhere the JAX model keeps it: the patch and position embeddings, every norm
  (LayerNorm, RMSNorm, GroupNorm statistics), RoPE, attention logits and softmax, the word
  embedding lookup and its sqrt(width) scale, the foresight embeddings and read-out, the action /
  state / time projections, the time embedding (float64 as the original), the Euler
  integration, and the whole VQ-VAE (the original keeps the tokenizer fp32).
fp16: for GPUs without bf16. As bf16 (fp16 weights, matmul inputs and KV cache; the same fp32
  parts), except that the residual streams of SigLIP and the experts stay fp32: fp16's largest
  number is 65504, and Gemma's residual stream is known to outgrow it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
LOW_PRECISION = (torch.bfloat16, torch.float16)


def compute_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'fp32' / 'bf16' / 'fp16' (or the torch dtype) -> the matmul dtype of SigLIP and the
    experts."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, *LOW_PRECISION):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; valid: {sorted(DTYPES)}")
    return DTYPES[dtype]


def stream_dtype(compute: torch.dtype) -> torch.dtype:
    """The residual streams' dtype for a compute dtype: fp32 under fp16 (see above)."""
    return torch.float32 if compute == torch.float16 else compute


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """No TF32 inside the block: fp32 matmuls and convolutions stay fp32 on Ampere+ GPUs (the
    VQ-VAE and the fp32 projections rely on it in both modes). A no-op on CPUs."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=torch.backends.cudnn.benchmark,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=False,
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
