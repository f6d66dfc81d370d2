"""The analytic FLOP count: the training step is three forward passes, and what each remat
policy recomputes is the part of the forward pass it does not keep, in the policies' order."""

import pytest

from f1_jax.models import remat
from f1_jax.models.sizes import get_model_config
from f1_jax.training import flops

FULL = get_model_config("full", num_scales=4, chunk_size=30)
UND_TOKENS = 3 * 256 + 48  # three cameras, 48 instruction tokens: stage 2


def test_the_model_flops_are_three_forward_passes():
    forward, outside = flops.forward_flops_per_example(FULL, UND_TOKENS, 3)
    model = flops.model_flops_per_example(FULL, UND_TOKENS, 3)
    assert model == 3 * (forward.total + outside)
    # The stage-2 example of issue 22's TPU measurements: about 14.1 TFLOP.
    assert model == pytest.approx(14.1e12, rel=0.01)


def test_each_policy_recomputes_what_it_does_not_keep():
    forward, _ = flops.forward_flops_per_example(FULL, UND_TOKENS, 3)
    assert set(flops.RECOMPUTED) == set(remat.POLICIES)
    recomputed = {
        p: flops.recomputed_flops_per_example(FULL, UND_TOKENS, 3, p) for p in flops.RECOMPUTED
    }
    assert recomputed["full"] == forward.total  # the whole scanned forward pass again
    assert recomputed["save_qkv"] == forward.total - forward.qkv
    assert recomputed["save_attention"] == forward.mlp + forward.scores
    assert recomputed["none"] == recomputed["dots"] == 0
    order = ["none", "dots_no_batch", "save_attention", "save_qkv", "full"]
    assert all(recomputed[a] < recomputed[b] for a, b in zip(order[1:], order[2:]))
    with pytest.raises(ValueError, match="Unknown remat policy"):
        flops.recomputed_flops_per_example(FULL, UND_TOKENS, 3, "qkv")
