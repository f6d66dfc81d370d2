"""Remat policies keep what they name: the activations the backward pass keeps of the scanned
layers (JAX's saved residuals, counted from `jax.ad_checkpoint.print_saved_residuals`) grow
from full remat over save_qkv and save_attention to no remat, in the expert stack and in SigLIP, and under a remat policy all of it is bf16 (the default precision).
That they never change the numbers: `test_f1.py::test_remat_policy_gives_the_full_remat_loss_and_gradients`."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from f1_jax.models.gemma import ExpertStack
from f1_jax.models.precision import get_precision
from f1_jax.models.siglip import SiglipEncoder
from f1_jax.models.sizes import get_model_config

TINY = get_model_config("tiny")
ORDER = ("full", "save_qkv", "save_attention", "none")
# A saved residual of the layer scan, as print_saved_residuals describes it: bf16[2,2,6,4,16] ...
_SCAN_RESIDUAL = re.compile(r"^(\w+)\[([\d,]*)\] output of scan", re.M)
_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "i32": 4, "bool": 1}


def _scan_residual_bytes(policy: str, fn, *args, capsys) -> int:
    capsys.readouterr()
    print_saved_residuals(fn, *args)
    residuals = _SCAN_RESIDUAL.findall(capsys.readouterr().out)
    if policy != "none":
        # The stream between layers and what a policy keeps are bf16 under the default precision
        # (fp32 only inside norms, RoPE, softmax and the losses): no fp32 activation is kept.
        assert {dtype for dtype, _ in residuals} == {"bf16"}, (policy, residuals)
    return sum(
        _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
        for dtype, dims in residuals
    )


def _stack_bytes(policy: str, capsys) -> int:
    experts = (TINY.und, TINY.gen, TINY.act)
    xs = [jnp.ones((2, 3, e.width)) for e in experts]
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    mask = jnp.ones((2, 9, 9), bool)
    stack = ExpertStack(experts, get_precision("default"), remat_policy=policy)
    params = stack.init(jax.random.key(0), xs, positions, mask)
    loss = lambda p, xs: sum(jnp.sum(o) for o in stack.apply(p, xs, positions, mask)[0])
    return _scan_residual_bytes(policy, loss, params, xs, capsys=capsys)


def _siglip_bytes(policy: str, capsys) -> int:
    side = TINY.siglip.image_size
    images = jnp.zeros((2, side, side, 3))
    encoder = SiglipEncoder(TINY.siglip, get_precision("default"), remat_policy=policy)
    params = encoder.init(jax.random.key(0), images)
    loss = lambda p, images: jnp.sum(encoder.apply(p, images))
    return _scan_residual_bytes(policy, loss, params, images, capsys=capsys)


@pytest.mark.parametrize("kept_bytes", [_stack_bytes, _siglip_bytes], ids=["stack", "siglip"])
def test_policies_keep_more_in_order(kept_bytes, capsys):
    kept = {policy: kept_bytes(policy, capsys) for policy in ORDER}
    assert all(kept[a] < kept[b] for a, b in zip(ORDER, ORDER[1:])), kept


def test_unknown_policy_is_named(capsys):
    with pytest.raises(ValueError, match="Unknown remat policy 'qkv'.*save_qkv"):
        _stack_bytes("qkv", capsys)
