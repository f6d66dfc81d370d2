"""The model FLOPs of a train step, counted analytically (the MFU numerator of the benchmarks and
of `python -m f1_jax.aot`).

Per example: for every transformer (SigLIP, and each expert of the joint stack)
6 x (layer parameters) x (tokens through them) for the forward and backward matmuls, plus
12 x layers x heads x head_dim x queries x keys for the attention score and value products
(forward 4, backward 8). The frozen VQ-VAE encoder and the foresight sampling passes that run
before the gradient pass are real work but not model FLOPs.

Why not the compiler's count: XLA's cost analysis counts a scanned layer's body once, not once
per layer (on a TPU it reported 90 TFLOP of a stage-2 step that is about 635).
"""

from f1_common import transforms
from f1_jax.models.f1 import F1Config


def model_flops_per_example(model_config: F1Config, num_und_tokens: int, cams: int = 3) -> float:
    """Analytic training FLOPs of one example (see the module docstring)."""
    c = model_config
    fc = c.foresight
    siglip_layer = 4 * (c.siglip.width**2 + c.siglip.width) + 2 * c.siglip.width * c.siglip.mlp_dim
    patches = c.siglip.num_patches
    flops = 6 * siglip_layer * c.siglip.depth * patches * cams
    flops += 12 * c.siglip.depth * c.siglip.width * patches * patches * cams
    flops += 6 * c.siglip.width * c.siglip.out_width * patches * cams
    gen_tokens = fc.num_tokens + fc.num_predicted - fc.scale_lengths[0]
    act_tokens = 1 + c.action.chunk_size
    und_tokens = num_und_tokens
    for expert, tokens in ((c.und, und_tokens), (c.gen, gen_tokens), (c.act, act_tokens)):
        layer = (
            2 * expert.num_heads * expert.head_dim * expert.width
            + 2 * expert.num_kv_heads * expert.head_dim * expert.width
            + 3 * expert.width * expert.mlp_dim
        )
        flops += 6 * layer * expert.depth * tokens
    total = und_tokens + gen_tokens + act_tokens
    flops += 12 * c.und.depth * c.und.num_heads * c.und.head_dim * total * total
    return float(flops)


def step_flops(model_config: F1Config, spec: transforms.ObservationSpec, batch_size: int) -> float:
    """Model FLOPs of one train step over a global batch of `batch_size` examples of `spec`."""
    und_tokens = len(spec.cameras) * model_config.siglip.num_patches + spec.max_token_len
    return model_flops_per_example(model_config, und_tokens, len(spec.cameras)) * batch_size
