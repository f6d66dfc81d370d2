"""The PyTorch runtime against f1_jax's `sample_actions` on the same export, inputs and noise.

fp32 (f1_jax `parity` precision, greedy foresight): the history frames' codes and the foresight
codes are equal, actions agree within FP32_ACTION_TOL. Measured on a 2-core CPU: actions
<= 2e-6 (tiny and small), code logits <= 5e-6, decoded foresight <= 7e-6; the smallest greedy
margin (best minus second-best logit) was 2.6e-3, far above the logit differences. (An fp32
time embedding instead of the float64 one moves small's actions by 1.1e-5: the bound is tight.)

bf16 (bf16 weights and matmuls, fp32 elsewhere) rounds differently from XLA's bf16, so it is
compared by statistics against the fp32 reference, next to f1_jax's own bf16 path (`default`
precision): at tiny its action error must stay within BF16_VS_JAX times the JAX bf16 error (both
measured ~2.6e-3 RMS for actions of RMS ~1.5; at small 6.3e-3 vs 6.5e-3) and far above the fp32
error (so bf16 really ran); foresight codes may flip where bf16 moves a logit across a small
margin, so only their agreement rate is bounded.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conversion import synthetic as exports
from f1_jax.models.foresight import _top_k_top_p_logits
from f1_torch import TorchPolicy
from f1_torch.foresight import top_k_top_p_filter
from tests.torch_runtime.reference import jax_history_codes, jax_reference

FP32_ACTION_TOL = 1e-5
FP32_LOGIT_TOL = 1e-4
FP32_IMAGE_TOL = 1e-4  # the decoded foresight in [-1, 1] after the VQ-VAE decoder
BF16_VS_JAX = 2.0  # torch bf16 action RMS error <= this x JAX bf16's (both against fp32)
BF16_MIN_ERROR = 1e-4  # ... and above this (fp32 is ~1e-7): the bf16 path did run in bf16
BF16_MIN_CODE_AGREEMENT = 0.9  # foresight codes equal to the fp32 reference, fraction
BF16_MAX_RELATIVE_RMS = 0.02  # small: action RMS error / action RMS (measured 0.005)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def _examples(policy: TorchPolicy, config, steps: list[int], seed: int = 0) -> list[dict]:
    """Preprocessed examples at the given steps of one episode; the others are only observed,
    so the history windows (t-9, t-6, t-3, t) hold distinct frames once t >= 9."""
    observations = exports.observations(config, max(steps) + 1, seed=seed)
    policy.reset()
    out = []
    for t, obs in enumerate(observations):
        if t in steps:
            out.append(policy.preprocess(obs))
        else:
            policy.observe(obs)
    policy.reset()
    return out


def _noise(config, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (config.action.chunk_size, config.action.action_dim)
    return rng.standard_normal(shape).astype(np.float32)


def _check_fp32(got: dict, want: dict, codes: np.ndarray, want_codes: np.ndarray) -> None:
    np.testing.assert_array_equal(codes, want_codes, err_msg="history frame codes")
    np.testing.assert_array_equal(got["foresight_tokens"], want["tokens"], err_msg="foresight")
    assert np.abs(got["actions"] - want["actions"]).max() <= FP32_ACTION_TOL
    assert np.abs(got["foresight_image"] - want["image"]).max() <= FP32_IMAGE_TOL


@pytest.fixture(scope="module")
def tiny_case(tiny_export):
    policy = TorchPolicy.load(tiny_export.directory, dtype="fp32", top_k=1)
    examples = _examples(policy, tiny_export.config, [0, 9, 14])
    noises = [_noise(tiny_export.config, seed) for seed in range(len(examples))]
    fp32 = [jax_reference(tiny_export, e, n) for e, n in zip(examples, noises)]
    return policy, examples, noises, fp32


def test_tiny_fp32_equals_jax(tiny_export, tiny_case):
    policy, examples, noises, references = tiny_case
    for example, noise, want in zip(examples, noises, references):
        got = policy.infer_normalized(example, noise=noise, return_foresight=True)
        want_codes = jax_history_codes(tiny_export, example)
        _check_fp32(got, want, policy.history_codes(example).numpy(), want_codes)
        # The model on its own, encoding the history frames itself (no frame-code cache).
        frames = torch.from_numpy(example["gen_frames"])[None]
        actions, foresight = policy.model.sample_actions(
            policy.model_inputs(example) | {"gen_frames": frames},
            noise=torch.from_numpy(noise)[None],
            return_foresight=True,
            decode=False,
        )
        np.testing.assert_array_equal(actions[0].numpy(), got["actions"])
        assert np.abs(foresight["logits"][0].numpy() - want["logits"]).max() <= FP32_LOGIT_TOL


def test_tiny_bf16_statistics(tiny_export, tiny_case):
    _, examples, noises, references = tiny_case
    policy = TorchPolicy.load(tiny_export.directory, dtype="bf16", top_k=1)
    ours, theirs, agreement = [], [], []
    for example, noise, want in zip(examples, noises, references):
        got = policy.infer_normalized(example, noise=noise, return_foresight=True)
        jax_bf16 = jax_reference(tiny_export, example, noise, precision="default")
        ours.append(got["actions"] - want["actions"])
        theirs.append(jax_bf16["actions"] - want["actions"])
        agreement.append(np.mean(got["foresight_tokens"] == want["tokens"]))
    ours_rms, theirs_rms = _rms(np.stack(ours)), _rms(np.stack(theirs))
    assert BF16_MIN_ERROR < ours_rms <= BF16_VS_JAX * theirs_rms, (ours_rms, theirs_rms)
    assert np.mean(agreement) >= BF16_MIN_CODE_AGREEMENT


def test_small_fp32_and_bf16(small_export):
    """One step at the small size (full ch-160 VQ-VAE at 256 px): the VQ-VAE dominates the CPU
    time, so this runs a single window (the first frame, clamped four times)."""
    config = small_export.config
    fp32 = TorchPolicy.load(small_export.directory, dtype="fp32", top_k=1)
    (example,) = _examples(fp32, config, [0])
    noise = _noise(config, 0)
    want = jax_reference(small_export, example, noise)
    got = fp32.infer_normalized(example, noise=noise, return_foresight=True)
    np.testing.assert_array_equal(got["foresight_tokens"], want["tokens"])
    assert np.abs(got["actions"] - want["actions"]).max() <= FP32_ACTION_TOL
    assert np.abs(got["foresight_image"] - want["image"]).max() <= FP32_IMAGE_TOL

    bf16 = TorchPolicy.load(small_export.directory, dtype="bf16", top_k=1)
    actions, foresight = bf16.model.sample_actions(
        bf16.model_inputs(example),
        history_codes=bf16.history_codes(example)[None],
        noise=torch.from_numpy(noise)[None],
        return_foresight=True,
        decode=False,  # the decoder is fp32 in both modes (checked above); it costs seconds
    )
    error = _rms(actions[0].numpy() - want["actions"])
    assert BF16_MIN_ERROR < error <= BF16_MAX_RELATIVE_RMS * _rms(want["actions"])
    agreement = np.mean(foresight["tokens"][0].numpy() == want["tokens"])
    assert agreement >= BF16_MIN_CODE_AGREEMENT


@pytest.mark.parametrize("top_k, top_p", [(900, 0.95), (5, 0.0), (0, 0.6), (3, 0.5), (64, 1.0)])
def test_top_k_top_p_filter_equals_jax(top_k, top_p):
    """VAR's filter, as f1_jax implements it: the same logits survive (ties included)."""
    rng = np.random.default_rng(top_k)
    logits = rng.normal(0, 2, (2, 7, 64)).astype(np.float32)
    logits[0, 0, :8] = logits[0, 0, 8]  # ties at the k-th value
    ours = top_k_top_p_filter(torch.from_numpy(logits), top_k, top_p).numpy()
    theirs = np.asarray(_top_k_top_p_logits(jnp.asarray(logits), top_k, top_p))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    np.testing.assert_array_equal(ours[~np.isinf(ours)], theirs[~np.isinf(theirs)])
