"""The model FLOPs of a train step, counted analytically (the MFU numerator of the benchmarks and
of `python -m f1_jax.aot`), and what a remat policy adds to them.

Per example: for every transformer (SigLIP, and each expert of the joint stack)
6 x (layer parameters) x (tokens through them) for the forward and backward matmuls, plus
12 x layers x heads x head_dim x queries x keys for the attention score and value products
(forward 4, backward 8). The frozen VQ-VAE encoder and the foresight sampling passes that run
before the gradient pass are real work but not model FLOPs.

Rematerialisation repeats part of the forward pass (2 x parameters x tokens per projection,
2 x heads x head_dim x queries x keys per attention product) in the backward pass; which part
follows from what the policy keeps (`f1_jax/models/remat.py`). Model FLOPs + recomputed FLOPs
are the FLOPs the hardware runs.

Why not the compiler's count: XLA's cost analysis counts a scanned layer's body once, not once
per layer (on a TPU it reported 90 TFLOP of a stage-2 step that is about 635).
"""

import dataclasses

from f1_common import transforms
from f1_jax.models.f1 import F1Config


@dataclasses.dataclass(frozen=True)
class ForwardFlops:
    """Forward FLOPs of one example's scanned layers, by kind of matmul."""

    qkv: float = 0.0  # q, k, v projections
    attention_out: float = 0.0  # the attention's output projection
    mlp: float = 0.0  # the MLP's matmuls
    scores: float = 0.0  # q . k
    values: float = 0.0  # probabilities . v

    def __add__(self, other: "ForwardFlops") -> "ForwardFlops":
        return ForwardFlops(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in dataclasses.fields(self))


# The part of the forward pass each remat policy runs again in the backward pass. With q, k, v
# kept the scores and values are recomputed (the softmax's probabilities are not kept); with the
# attention's output kept too, only the scores (for the probabilities the backward pass needs).
# `dots_no_batch` keeps the projections, not the attention products (they have batch dims).
RECOMPUTED = {
    "none": (),
    "dots": (),
    "dots_no_batch": ("scores", "values"),
    "save_attention": ("mlp", "scores"),
    "save_qkv": ("attention_out", "mlp", "scores", "values"),
    "full": ("qkv", "attention_out", "mlp", "scores", "values"),
}


def _scale(flops: ForwardFlops, factor: float) -> ForwardFlops:
    return ForwardFlops(*(factor * getattr(flops, f.name) for f in dataclasses.fields(flops)))


def forward_flops_per_example(
    model_config: F1Config, num_und_tokens: int, cams: int = 3
) -> tuple[ForwardFlops, float]:
    """(forward FLOPs of the scanned layers, forward FLOPs outside them: SigLIP's projector).
    Three times their sum is the training step's model FLOPs."""
    c = model_config
    s, fc = c.siglip, c.foresight
    patches = s.num_patches
    # SigLIP, per camera: biased q, k, v, out projections (width x width), a two-matmul MLP.
    per_camera = ForwardFlops(
        qkv=2 * s.depth * patches * 3 * (s.width**2 + s.width),
        attention_out=2 * s.depth * patches * (s.width**2 + s.width),
        mlp=2 * s.depth * patches * 2 * s.width * s.mlp_dim,
        scores=2 * s.depth * s.width * patches * patches,
        values=2 * s.depth * s.width * patches * patches,
    )
    forward = _scale(per_camera, cams)
    outside = cams * 2 * s.width * s.out_width * patches
    # The joint stack: each expert's projections over its own tokens; one attention over all.
    gen_tokens = fc.num_tokens + fc.num_predicted - fc.scale_lengths[0]
    act_tokens = 1 + c.action.chunk_size
    total = num_und_tokens + gen_tokens + act_tokens
    for e, tokens in ((c.und, num_und_tokens), (c.gen, gen_tokens), (c.act, act_tokens)):
        q_dim, kv_dim = e.num_heads * e.head_dim, e.num_kv_heads * e.head_dim
        forward += ForwardFlops(
            qkv=2 * e.depth * tokens * e.width * (q_dim + 2 * kv_dim),
            attention_out=2 * e.depth * tokens * q_dim * e.width,
            mlp=2 * e.depth * tokens * 3 * e.width * e.mlp_dim,
        )
    joint = 2 * c.und.depth * c.und.num_heads * c.und.head_dim * total * total
    return forward + ForwardFlops(scores=joint, values=joint), outside


def model_flops_per_example(model_config: F1Config, num_und_tokens: int, cams: int = 3) -> float:
    """Analytic training FLOPs of one example (see the module docstring): 3 x the forward."""
    forward, outside = forward_flops_per_example(model_config, num_und_tokens, cams)
    return float(3 * (forward.total + outside))


def recomputed_flops_per_example(
    model_config: F1Config, num_und_tokens: int, cams: int, remat_policy: str
) -> float:
    """The forward FLOPs that `remat_policy` runs again in the backward pass, per example."""
    if remat_policy not in RECOMPUTED:
        raise ValueError(f"Unknown remat policy {remat_policy!r}; valid: {sorted(RECOMPUTED)}")
    forward, _ = forward_flops_per_example(model_config, num_und_tokens, cams)
    return float(sum(getattr(forward, kind) for kind in RECOMPUTED[remat_policy]))


def _und_tokens(model_config: F1Config, spec: transforms.ObservationSpec) -> int:
    return len(spec.cameras) * model_config.siglip.num_patches + spec.max_token_len


def step_flops(model_config: F1Config, spec: transforms.ObservationSpec, batch_size: int) -> float:
    """Model FLOPs of one train step over a global batch of `batch_size` examples of `spec`."""
    und = _und_tokens(model_config, spec)
    return model_flops_per_example(model_config, und, len(spec.cameras)) * batch_size


def step_recomputed_flops(
    model_config: F1Config, spec: transforms.ObservationSpec, batch_size: int
) -> float:
    """The FLOPs one train step spends recomputing under the model's remat policy."""
    und = _und_tokens(model_config, spec)
    per_example = recomputed_flops_per_example(
        model_config, und, len(spec.cameras), model_config.remat_policy
    )
    return per_example * batch_size
