"""Named rematerialisation policies: what the backward pass keeps of a layer's forward pass.

A scanned layer under `nn.remat` keeps its input (the scan carry) and the activations its policy
saves; everything else the backward pass recomputes from them. Recomputing costs FLOPs, keeping
costs memory (per layer, per token). The layers tag the activations worth keeping with
`checkpoint_name` (the `*_NAMES` below), so a policy can name what it keeps:

| policy | keeps per layer and token (bf16) | recomputes in the backward pass |
| --- | --- | --- |
| none | everything (no remat) | nothing |
| full | only the layer input | the whole forward |
| save_qkv | q, k, v after RoPE | attention, output projection, MLP |
| save_attention | save_qkv + attention context and output projection | the MLP |
| dots_no_batch | every matmul output without a batch dimension | little |
| dots | every matmul output (the MLP hidden layer included) | almost nothing |

What a policy saves never changes the numbers: a kept activation equals the recomputed one
(tests/models/test_remat.py checks one step's loss and gradients under every policy).
docs/architecture.md "Remat policies" has their memory on TPU pods.
"""

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name

QKV_NAMES = ("query_proj", "key_proj", "value_proj")
ATTENTION_NAMES = QKV_NAMES + ("attention_context", "attention_out")

_policies = jax.checkpoint_policies
POLICIES = {
    "none": None,
    "full": _policies.nothing_saveable,
    "save_qkv": _policies.save_only_these_names(*QKV_NAMES),
    "save_attention": _policies.save_only_these_names(*ATTENTION_NAMES),
    "dots_no_batch": _policies.dots_with_no_batch_dims_saveable,
    "dots": _policies.dots_saveable,
}


def tag(x: jax.Array, name: str) -> jax.Array:
    """Names an activation that a policy may keep (an identity outside `jax.checkpoint`)."""
    return checkpoint_name(x, name)


def check_policy(name: str) -> None:
    if name not in POLICIES:
        raise ValueError(f"Unknown remat policy {name!r}; valid: {sorted(POLICIES)}")


def remat_layer(layer: type[nn.Module], policy: str) -> type[nn.Module]:
    """`layer` rematerialised under the named policy (unchanged for "none")."""
    check_policy(policy)
    if POLICIES[policy] is None:
        return layer
    return nn.remat(layer, prevent_cse=False, policy=POLICIES[policy])
