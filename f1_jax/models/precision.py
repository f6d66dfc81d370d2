"""Numerical precision settings shared by every model module.

`default` (docs/model.md, "Numerics"): fp32 parameters, bf16 matmul inputs, fp32 norms, RoPE, softmax and
losses. `parity` runs everything in fp32 with the highest matmul precision, for tests against
reference implementations (transformers, torch.nn.functional).
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Precision:
    """How a model computes: the dtype of matmul inputs and XLA's matmul precision."""

    name: str
    compute_dtype: jnp.dtype
    matmul_precision: jax.lax.Precision

    def cast(self, x: jax.Array) -> jax.Array:
        """Casts an activation or weight to the matmul input dtype."""
        return x.astype(self.compute_dtype)


PRECISIONS = {
    "default": Precision("default", jnp.bfloat16, jax.lax.Precision.DEFAULT),
    "parity": Precision("parity", jnp.float32, jax.lax.Precision.HIGHEST),
}


def get_precision(name: str) -> Precision:
    """Returns the precision setting called `name` ('default' or 'parity')."""
    if name not in PRECISIONS:
        raise ValueError(f"Unknown precision {name!r}; valid names: {sorted(PRECISIONS)}")
    return PRECISIONS[name]
