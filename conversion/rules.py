"""Named, invertible layout rules between a foreign tensor and one (per-layer) slice of ours.

Every rule is a pair of pure functions written with generic array methods (`.T`, `.reshape`,
`.transpose`), so they work on NumPy arrays and on `jax.ShapeDtypeStruct`s under `jax.eval_shape`
(which is how expected foreign shapes are derived without allocating anything). `to_ours` maps the
foreign tensor to our layout, `to_foreign` is its exact inverse: both only move or regroup
elements, so a round trip is bit-exact.
"""

import dataclasses
from typing import Callable

import jax
import numpy as np

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Rule:
    """A named layout change. `to_foreign(to_ours(x)) == x` element for element."""

    name: str
    to_ours: Callable[[Array], Array]
    to_foreign: Callable[[Array], Array]

    def foreign_shape(self, ours_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The foreign shape that maps onto `ours_shape` (computed abstractly, nothing allocated)."""
        spec = jax.ShapeDtypeStruct(tuple(ours_shape), np.float32)
        return tuple(jax.eval_shape(self.to_foreign, spec).shape)


IDENTITY = Rule("identity", lambda x: x, lambda y: y)
# torch Linear weight [out, in] <-> Flax Dense kernel [in, out].
LINEAR = Rule("linear", lambda x: x.T, lambda y: y.T)
# torch Conv2d weight [O, I, kh, kw] <-> Flax Conv kernel [kh, kw, I, O].
CONV2D = Rule("conv2d", lambda x: x.transpose(2, 3, 1, 0), lambda y: y.transpose(3, 2, 0, 1))
# torch Conv1d weight [O, I, k] <-> our temporal conv kernel [k, I, O].
CONV1D = Rule("conv1d", lambda x: x.transpose(2, 1, 0), lambda y: y.transpose(2, 1, 0))


def q_proj(num_heads: int, head_dim: int) -> Rule:
    """Gemma q_proj [N*H, D] <-> q_einsum [N, D, H]."""

    def to_ours(x):
        return x.reshape(num_heads, head_dim, x.shape[-1]).transpose(0, 2, 1)

    def to_foreign(y):
        return y.transpose(0, 2, 1).reshape(num_heads * head_dim, y.shape[1])

    return Rule(f"q_proj(N={num_heads},H={head_dim})", to_ours, to_foreign)


def kv_proj(num_kv_heads: int, head_dim: int) -> Rule:
    """Gemma k_proj / v_proj [K*H, D] <-> one half of kv_einsum, [K, D, H]."""
    rule = q_proj(num_kv_heads, head_dim)
    return dataclasses.replace(rule, name=f"kv_proj(K={num_kv_heads},H={head_dim})")


def o_proj(num_heads: int, head_dim: int) -> Rule:
    """Gemma o_proj [D, N*H] <-> attn_vec_einsum [N, H, D]."""

    def to_ours(x):
        return x.T.reshape(num_heads, head_dim, x.shape[0])

    def to_foreign(y):
        return y.reshape(num_heads * head_dim, y.shape[-1]).T

    return Rule(f"o_proj(N={num_heads},H={head_dim})", to_ours, to_foreign)


def reshape(foreign_shape: tuple[int, ...], ours_shape: tuple[int, ...]) -> Rule:
    """A pure regrouping of axes (e.g. openpi's [W, heads, head_dim] <-> our [W, W])."""
    return Rule(
        f"reshape({foreign_shape}->{ours_shape})",
        lambda x: x.reshape(ours_shape),
        lambda y: y.reshape(foreign_shape),
    )


# openpi keeps the SigLIP position embedding with a leading batch axis: [1, N, W] <-> [N, W].
SQUEEZE0 = Rule("squeeze0", lambda x: x.reshape(x.shape[1:]), lambda y: y.reshape((1,) + y.shape))
