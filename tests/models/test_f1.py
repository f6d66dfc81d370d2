"""The assembled F1: the U -> G -> A mask by hand, forward/loss/sampling at the tiny size, and
the full-size parameter counts per part (reference section 7) without allocating them."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f1_jax.models.sizes import get_model_config
from f1_jax.models import masks
from f1_jax.models.f1 import F1, example_batch, sample_actions, sequence_layout
from f1_jax.training import sharding
from tolerances import assert_close, transformer_terms

TINY = get_model_config("tiny", precision="parity")


def _stack_terms(batch) -> int:
    """Reduction lengths through the expert stack (the widest expert, attending over the whole
    sequence): the `terms` of an fp32 rounding bound (tests/tolerances.py) for comparing two
    passes that differ in how they run the stack (joint vs cached). What feeds the stack (SigLIP,
    the VQ-VAE encoder) is the same computation on the same inputs in both passes."""
    num_und = batch["images"].shape[1] * TINY.siglip.num_patches + batch["tokens"].shape[1]
    pad, _ = sequence_layout(jnp.ones((1, num_und), bool), TINY.foresight, TINY.action.chunk_size)
    e = TINY.und
    return transformer_terms(
        depth=e.depth,
        width=e.width,
        mlp_dim=e.mlp_dim,
        num_heads=e.num_heads,
        head_dim=e.head_dim,
        keys=pad.shape[1],
    )


def _assert_same_loss_and_gradients(new, old, batch) -> None:
    """Two fp32 passes of the same step ((loss, metrics), gradients) within the stack's rounding
    bound (see `_stack_terms`)."""
    (loss_new, metrics_new), grads_new = new
    (loss_old, metrics_old), grads_old = old
    terms = _stack_terms(batch)
    for name in metrics_old:
        assert_close(metrics_new[name], metrics_old[name], terms=terms, scale=1.0)
    assert_close(loss_new, loss_old, terms=terms, scale=abs(float(loss_old)))
    flat_new = jax.tree_util.tree_leaves_with_path(grads_new)
    flat_old = dict(jax.tree_util.tree_leaves_with_path(grads_old))
    moved = 0
    # Backward through the stack: the forward's reduction lengths again. Scale: the parameter's
    # largest gradient entry, but at least 1e-6 of the largest gradient anywhere (a gradient
    # that cancels to ~0, e.g. of a bias under a norm, is noise at the size of its summands).
    largest = max(float(jnp.abs(g).max()) for _, g in flat_new)
    for path, g_new in flat_new:
        g_old = flat_old[path]
        scale = max(float(jnp.abs(g_old).max()), 1e-6 * largest)
        assert_close(g_new, g_old, terms=2 * terms, scale=scale, err_msg=jax.tree_util.keystr(path))
        moved += int(float(jnp.abs(g_old).max()) > 1e-6 * largest)
    assert moved > 50  # the gradients compared are real, not all zeros


GROUPS = ["img", "lang", "hist", "q0", "s1", "s2", "s3", "state", "act"]
# VISIBLE[query][key]: may a token of group `query` attend to a token of group `key`?
VISIBLE = {
    "img": "111000000",
    "lang": "111000000",
    "hist": "111000000",  # history tokens and understanding tokens see each other both ways
    "q0": "111100000",  # the last history token, doubling as the scale-0 query
    "s1": "111110000",
    "s2": "111111000",
    "s3": "111111100",
    "state": "111111110",
    "act": "111111111",
}


def test_mask_matches_the_hand_written_table():
    fc = TINY.foresight
    num_img, num_lang, chunk = 8, 5, TINY.action.chunk_size
    und_pad = jnp.asarray([[True] * num_img + [True, True, True, False, False]])
    pad, starts = sequence_layout(und_pad, fc, chunk)
    mask = np.asarray(masks.block_attention_mask(pad, starts))[0]
    labels = (
        ["img"] * num_img
        + ["lang"] * num_lang
        + ["hist"] * fc.num_cond
        + ["q0"]
        + ["s1"] * 4
        + ["s2"] * 9
        + ["s3"] * 16
        + ["state"]
        + ["act"] * chunk
    )
    labels = np.asarray(labels)
    assert len(labels) == mask.shape[0]
    real = np.asarray(pad[0])
    for qi, query in enumerate(GROUPS):
        for ki, key in enumerate(GROUPS):
            block = mask[np.ix_((labels == query) & real, (labels == key) & real)]
            assert block.size and (block == (VISIBLE[query][ki] == "1")).all(), (query, key)
    assert not mask[:, ~real].any()  # padded language tokens are invisible as keys
    positions = np.asarray(masks.positions_from_pad(pad))[0]
    assert positions[-1] == real.sum() - 1 and positions[num_img + 3] == positions[num_img + 2]


@pytest.fixture(scope="module")
def tiny_model():
    model = F1(TINY)
    batch = example_batch(TINY, 2)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch, jax.random.key(1)))
    return model, params, batch


def test_forward_loss_and_metrics(tiny_model):
    model, params, batch = tiny_model
    loss, metrics = jax.jit(model.apply)(params, batch, jax.random.key(2))
    assert np.isfinite(loss)
    for name in ("action_loss", "foresight_loss", "wm_acc_mean", "wm_acc_tail"):
        assert np.isfinite(metrics[name]), name
    action, foresight = metrics["action_loss"], metrics["foresight_loss"]
    # 1.0 * action + 0.1 * foresight: two products and a sum.
    assert_close(loss, action + 0.1 * foresight, terms=3, scale=abs(action) + 0.1 * abs(foresight))
    grads = jax.jit(jax.grad(lambda p: model.apply(p, batch, jax.random.key(2))[0]))(params)
    assert float(jnp.abs(grads["params"]["stack"]["layers"]["gen"]["q_einsum"]).max()) > 0
    assert float(jnp.abs(grads["params"]["vqvae"]["quantize"]["embedding"]).max()) == 0  # frozen


def test_training_logits_equal_the_cached_sampling_logits(tiny_model):
    """The loss's joint pass and the cached scale-by-scale passes see the same tokens."""
    model, params, batch = tiny_model
    rng = jax.random.key(3)
    _, metrics = model.apply(params, batch, rng)
    rng_fore = jax.random.split(rng, 4)[0]

    def cached_ce(module):
        und, und_pad = module.embed_understanding(batch)
        frames = jnp.concatenate([batch["history"], batch["target_frame"][:, None]], axis=1)
        var_inputs, codes = module.encode_frames(frames)
        foresight, _, _ = module.sample_foresight(
            und, und_pad, module.foresight.embed_history(var_inputs[:, :-1]), rng_fore
        )
        targets = codes[:, -1, : TINY.foresight.num_predicted]
        logp = jax.nn.log_softmax(foresight["logits"], -1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1)), foresight["logits"]

    ce, logits = nn.apply(cached_ce, model)(params)
    # The stack, the logits head (LayerNorm over 32, Linear 32 + bias), log-softmax over the
    # vocabulary and the mean over 2 x num_predicted tokens; a logit's absolute error is the CE's.
    fc = TINY.foresight
    head = (2 * fc.width, fc.width + 1, fc.vocab_size, 2 * fc.num_predicted)
    scale = max(abs(float(ce)), float(jnp.abs(logits).max()))
    assert_close(ce, metrics["foresight_loss"], terms=(_stack_terms(batch), *head), scale=scale)


def test_teacher_forcing_mode_runs_and_differs(tiny_model):
    model, params, batch = tiny_model
    teacher = F1(
        dataclasses.replace(TINY, foresight_training="teacher_forcing", action_loss_weight=0.0)
    )
    loss, metrics = jax.jit(teacher.apply)(params, batch, jax.random.key(2))
    assert "action_loss" not in metrics
    foresight = metrics["foresight_loss"]
    assert_close(loss, 0.1 * foresight, terms=1, scale=0.1 * abs(foresight))  # one product


def test_sample_actions_and_foresight(tiny_model):
    model, params, batch = tiny_model
    obs = {
        k: batch[k] for k in ("images", "image_masks", "tokens", "token_mask", "state", "history")
    }
    noise = jax.random.normal(jax.random.key(5), (2, TINY.action.chunk_size, 32))
    run = jax.jit(lambda p, o, r, n: sample_actions(model, p, o, r, n, return_foresight=True))
    actions, foresight = run(params, obs, jax.random.key(4), noise)
    assert actions.shape == (2, TINY.action.chunk_size, 32) and np.isfinite(actions).all()
    assert foresight["tokens"].shape == (2, TINY.foresight.num_predicted)
    assert foresight["image"].shape == (2, 32, 32, 3)
    again, _ = run(params, obs, jax.random.key(4), noise)
    np.testing.assert_array_equal(actions, again)  # explicit keys: same key, same actions


def test_default_precision_runs_in_bf16():
    config = get_model_config("tiny")
    model, batch = F1(config), example_batch(config, 1)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch, jax.random.key(1)))
    loss, _ = jax.jit(model.apply)(params, batch, jax.random.key(2))
    assert np.isfinite(loss)
    assert params["params"]["stack"]["layers"]["und"]["q_einsum"].dtype == jnp.float32


def test_full_size_parameter_counts():
    config = get_model_config("full")
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        example_batch(dataclasses.replace(config), 1, num_tokens=48),
    )
    shapes = nn.unbox(jax.eval_shape(F1(config).init, jax.random.key(0), batch, jax.random.key(1)))
    p = shapes["params"]
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    siglip = {k: v for k, v in p["siglip"].items() if k != "projector"}
    assert abs(count(siglip) - 412.45e6) < 0.01e6  # SigLIP So400m/14: 412.45 M
    assert count(p["siglip"]["projector"]) == 2_361_344  # projector: 2.36 M
    assert count(p["stack"]["layers"]["und"]) == 1_981_882_368  # Gemma-2B layers: 1981.88 M
    assert count(p["embedder"]) == 526_647_296  # embedding: 526.65 M
    assert count(p["stack"]["layers"]["gen"]) == 311_463_936  # generation expert: 311.46 M
    assert count(p["stack"]["layers"]["act"]) == 311_463_936  # action expert: 311.46 M
    assert count(p["action_io"]) == 3_248_160  # action/state projections: 3.25 M
    assert count(p["vqvae"]) == 108_948_355  # VAR VQ-VAE (frozen)
    assert abs(count(p["foresight"]) - 5.66e6) < 0.005e6  # foresight extras: 5.66 M


def test_cached_velocity_equals_the_joint_pass(tiny_model):
    """The denoising step on the cached prefix computes what the training pass computes."""
    model, params, batch = tiny_model
    x_t = jax.random.normal(jax.random.key(5), (2, TINY.action.chunk_size, 32))
    t = jnp.asarray([0.7, 0.3])

    def both(module):
        und, und_pad = module.embed_understanding(batch)
        history, _ = module.encode_frames(batch["history"])
        prefix = module.foresight.embed_history(history)
        foresight, cache, prefix_pad = module.sample_foresight(
            und, und_pad, prefix, jax.random.key(1)
        )
        cached = module.velocity(cache, prefix_pad, batch["state"], x_t, t)
        scale_tokens = module.foresight.embed_scale_inputs(foresight["scale_inputs"], 1)
        gen = jnp.concatenate([prefix, scale_tokens], axis=1)
        act = module.action_io(module._pad_to(batch["state"], 32), x_t, t)
        pad, starts = sequence_layout(und_pad, TINY.foresight, TINY.action.chunk_size)
        (_, _, out), _ = module.stack(
            [und, gen, act],
            masks.positions_from_pad(pad),
            masks.block_attention_mask(pad, starts),
        )
        return cached, module.action_io.velocity(out[:, 1:])

    cached, joint = jax.jit(nn.apply(both, model))(params)
    # The stack (cached prefix vs one joint pass), then the velocity projection (32 + bias).
    assert_close(cached, joint, terms=(_stack_terms(batch), TINY.action.width + 1))


@pytest.mark.parametrize("num_scales", [1, 4])
def test_prefix_reuse_gives_the_joint_pass_loss_and_gradients(tiny_model, num_scales):
    """Sampled training with the prefix run once (its cache reused for sampling and for the loss)
    equals the original order (a gradient-free prefix pass to sample, then one joint pass): the
    same foresight samples, loss, metrics and gradients of every parameter, in fp32."""
    _, params, batch = tiny_model
    base = dataclasses.replace(
        TINY, foresight=dataclasses.replace(TINY.foresight, num_scales=num_scales)
    )
    rng = jax.random.key(4)

    def loss_and_grads(reuse: bool):
        model = F1(dataclasses.replace(base, reuse_prefix=reuse))
        fn = jax.value_and_grad(lambda p: model.apply(p, batch, rng), has_aux=True)
        return jax.jit(fn)(params)

    _assert_same_loss_and_gradients(loss_and_grads(True), loss_and_grads(False), batch)


@pytest.mark.parametrize("policy", ["save_qkv", "save_attention"])
def test_remat_policy_gives_the_full_remat_loss_and_gradients(tiny_model, policy):
    """A remat policy changes what the backward pass keeps, not what it computes: one sampled
    training step's loss, metrics and gradients under each named policy equal those under full
    remat (the recipes' policy), in fp32. The compiler may sum in another order where it
    recomputes, hence the rounding bound rather than bit equality."""
    _, params, batch = tiny_model
    rng = jax.random.key(4)

    def loss_and_grads(policy: str):
        model = F1(dataclasses.replace(TINY, remat_policy=policy))
        fn = jax.value_and_grad(lambda p: model.apply(p, batch, rng), has_aux=True)
        return jax.jit(fn)(params)

    _assert_same_loss_and_gradients(loss_and_grads(policy), loss_and_grads("full"), batch)


def test_splash_attention_gives_the_xla_loss_and_gradients(tiny_model):
    """The training step with its joint attention through splash attention (run by Pallas's
    interpreter on this CPU, on a mesh of 2 devices: each runs the kernel on its example) equals
    XLA's einsums on one device: loss, metrics and every gradient, in fp32. The prefix, sampling
    and suffix passes all go through it; a padded instruction token and, in one example, a
    missing camera make the real keys differ per example (the segment ids)."""
    _, params, batch = tiny_model
    batch = dict(batch, image_masks=np.array(batch["image_masks"]))
    batch["image_masks"][1, -1] = False
    rng = jax.random.key(4)

    def loss_and_grads_fn(attention: str):
        model = F1(dataclasses.replace(TINY, attention=attention))
        return jax.value_and_grad(lambda p: model.apply(p, batch, rng), has_aux=True)

    def loss_and_grads(attention: str):
        return jax.jit(loss_and_grads_fn(attention))(params)

    mesh = sharding.make_mesh((1, 2, 1), devices=jax.devices()[:2])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        jaxpr = str(jax.make_jaxpr(loss_and_grads_fn("splash_interpret"))(params))
        assert "shard_map" in jaxpr and "splash" in jaxpr  # the kernel, per device
        splash = loss_and_grads("splash_interpret")
    _assert_same_loss_and_gradients(splash, loss_and_grads("xla"), batch)


def test_frames_encoded_by_step_give_the_same_codes_loss_and_gradients(tiny_model):
    """`encode_frames_by_step` loops the frozen VQ-VAE over the frames' time steps instead of
    encoding all B x T at once (less memory): the same parameters, the same codes bit for bit,
    and the same training step (loss, metrics, gradients) in fp32."""
    _, params, batch = tiny_model
    by_step, at_once = (
        F1(dataclasses.replace(TINY, encode_frames_by_step=flag)) for flag in (True, False)
    )
    frames = jnp.concatenate([batch["history"], batch["target_frame"][:, None]], axis=1)
    assert frames.shape[1] > 1
    codes = [
        jax.jit(nn.apply(lambda m: m.frame_codes(frames), model))(params)
        for model in (by_step, at_once)
    ]
    assert codes[0].shape == (2, frames.shape[1], sum(p * p for p in TINY.vqvae.patch_nums))
    np.testing.assert_array_equal(codes[0], codes[1])
    init = [
        jax.tree_util.tree_structure(
            jax.eval_shape(model.init, jax.random.key(0), batch, jax.random.key(1))
        )
        for model in (by_step, at_once)
    ]
    assert init[0] == init[1]
    rng = jax.random.key(4)

    def loss_and_grads(model):
        fn = jax.value_and_grad(lambda p: model.apply(p, batch, rng), has_aux=True)
        return jax.jit(fn)(params)

    _assert_same_loss_and_gradients(loss_and_grads(by_step), loss_and_grads(at_once), batch)
