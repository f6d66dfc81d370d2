"""The fast paths of the PyTorch runtime against today's eager fp32 path, at the tiny size.

- attention="sdpa" (torch's fused attention with the block mask as a bias) in fp32: the same
  foresight codes (greedy) and actions within the parity tests' fp32 tolerance.
- dtype="bf16" / "fp16", eager and SDPA: actions near the fp32 ones by statistics (as the bf16
  parity test), foresight codes mostly equal, nothing non-finite; fp16 keeps the residual
  streams fp32 and the norms / softmax fp32.
- rope="divide": the RoPE angles are bit for bit the original F1 code's `pos / timescale`, closer
  to the exact angle than the reciprocal rule; actions stay within fp32 tolerance.
- compile=True (torch.compile): the same foresight codes and actions within fp32 tolerance.
"""

import os

import numpy as np
import pytest
import torch

from f1_common.model_config import read_config, with_sampling
from f1_torch import TorchPolicy, load_model
from f1_torch.gemma import RMSNorm, rope_angles, rope_table
from conversion import synthetic as exports

FP32_ACTION_TOL = 1e-5  # as test_parity.py: the eager path vs f1_jax
FP32_LOGIT_TOL = 1e-4
LOW_MAX_RELATIVE_RMS = 0.02  # bf16 / fp16 action RMS error / action RMS (measured below 0.005)
LOW_MIN_ERROR = 1e-5  # ... and above this (fp32 paths differ by ~1e-7): low precision did run
LOW_MIN_CODE_AGREEMENT = 0.9  # foresight codes equal to the fp32 eager path, fraction
STEPS = (0, 9)  # the examples' steps in one episode: a clamped and a full history window


def _rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


@pytest.fixture(scope="module")
def case(tiny_export):
    """Examples, their history codes and noise, and the eager fp32 outputs (greedy)."""
    config = tiny_export.config
    policy = TorchPolicy.load(tiny_export.directory, top_k=1)
    observations = exports.observations(config, max(STEPS) + 1, seed=3)
    examples = []
    for t, obs in enumerate(observations):
        if t in STEPS:
            examples.append(policy.preprocess(obs))
        else:
            policy.observe(obs)
    rng = np.random.default_rng(0)
    shape = (len(examples), config.action.chunk_size, config.action.action_dim)
    noises = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    codes = [policy.history_codes(e)[None] for e in examples]
    reference = _run(policy.model, policy, examples, codes, noises)
    return policy, examples, codes, noises, reference


def _run(model, policy, examples, codes, noises) -> list[tuple[np.ndarray, dict]]:
    out = []
    for example, code, noise in zip(examples, codes, noises):
        actions, foresight = model.sample_actions(
            policy.model_inputs(example),
            history_codes=code,
            noise=noise[None],
            return_foresight=True,
            decode=False,
        )
        out.append((actions[0].float().numpy(), {k: v[0] for k, v in foresight.items()}))
    return out


def _model(tiny_export, **options):
    """The tiny export with greedy foresight and the given runtime options."""
    config = with_sampling(read_config(tiny_export.directory), top_k=1)
    return load_model(tiny_export.directory, config=config, **options)


def _check_fp32(got, want, what: str) -> None:
    for (actions, foresight), (want_actions, want_foresight) in zip(got, want, strict=True):
        np.testing.assert_array_equal(foresight["tokens"], want_foresight["tokens"], err_msg=what)
        logits = (foresight["logits"] - want_foresight["logits"]).abs().max().item()
        assert logits <= FP32_LOGIT_TOL, f"{what}: logits differ by {logits}"
        error = np.abs(actions - want_actions).max()
        assert error <= FP32_ACTION_TOL, f"{what}: actions differ by {error}"


def test_sdpa_equals_eager_in_fp32(tiny_export, case):
    policy, examples, codes, noises, reference = case
    model = _model(tiny_export, attention="sdpa")
    _check_fp32(_run(model, policy, examples, codes, noises), reference, "sdpa fp32")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_low_precision_near_fp32(tiny_export, case, dtype, attention):
    policy, examples, codes, noises, reference = case
    model = _model(tiny_export, dtype=dtype, attention=attention)
    want = np.stack([a for a, _ in reference])
    got_runs = _run(model, policy, examples, codes, noises)
    got = np.stack([a for a, _ in got_runs])
    assert np.isfinite(got).all()
    relative = _rms(got - want) / _rms(want)
    assert LOW_MIN_ERROR <= _rms(got - want), f"{dtype}: equal to fp32, did it run in {dtype}?"
    assert relative <= LOW_MAX_RELATIVE_RMS, f"{dtype} {attention}: relative RMS {relative}"
    tokens = np.concatenate([f["tokens"].numpy() for _, f in got_runs])
    want_tokens = np.concatenate([f["tokens"].numpy() for _, f in reference])
    assert np.mean(tokens == want_tokens) >= LOW_MIN_CODE_AGREEMENT


def test_fp16_keeps_streams_norms_and_softmax_in_fp32(tiny_export):
    model = _model(tiny_export, dtype="fp16")
    assert model.stack.dtype == torch.float16 and model.stack.stream_dtype == torch.float32
    assert model.stack.und.layers[0].self_attn.q_proj.weight.dtype == torch.float16
    assert model.stack.new_cache(1, 4, "cpu").keys.dtype == torch.float16
    norm = model.stack.und.layers[0].input_layernorm
    assert norm.weight.dtype == torch.float32
    # A value fp16 cannot square (300^2 > 65504): the norm computes in fp32 all the same.
    x = torch.full((1, 1, norm.weight.numel()), 300.0, dtype=torch.float16)
    want = (RMSNorm.forward(norm, x.float())).half()
    assert torch.isfinite(norm(x)).all() and torch.equal(norm(x), want)


def test_divide_rope_is_the_originals(tiny_export, case):
    head_dim, base = 256, 10_000.0
    positions = torch.arange(0, 1200)[None]
    # The original F1 code (paligemma_with_expert.apply_rope), in torch fp32.
    exponents = (2.0 / head_dim) * torch.arange(head_dim // 2, dtype=torch.float32)
    radians = positions[..., None].to(torch.float32) / (base**exponents)[None, None, :]
    sin, cos = rope_angles(positions, rope_table(head_dim, base, "divide"), "divide")
    assert torch.equal(sin[:, :, 0], torch.sin(radians))
    assert torch.equal(cos[:, :, 0], torch.cos(radians))
    # The reciprocal rule rounds twice: farther from the exact angle, in some entries.
    exact = positions[..., None].double() / (base ** exponents.double())
    reciprocal_sin, _ = rope_angles(positions, rope_table(head_dim, base, "reciprocal"))
    error_divide = (sin[:, :, 0].double() - torch.sin(exact)).abs().max().item()
    error_reciprocal = (reciprocal_sin[:, :, 0].double() - torch.sin(exact)).abs().max().item()
    assert not torch.equal(sin, reciprocal_sin)
    assert error_divide < error_reciprocal
    # The whole model: the angles move by fp32 roundings, the actions within fp32 tolerance.
    policy, examples, codes, noises, reference = case
    model = _model(tiny_export, rope="divide")
    _check_fp32(_run(model, policy, examples, codes, noises), reference, "rope divide")


COMPILE_BUDGET_S = float(os.environ.get("F1_TORCH_COMPILE_TEST_BUDGET_S", "0"))


@pytest.mark.skipif(
    COMPILE_BUDGET_S <= 0,
    reason="torch.compile of the tiny model takes minutes of inductor C++ compilation on a 2-core "
    "CPU (more than the test budget); set F1_TORCH_COMPILE_TEST_BUDGET_S=600 to run it",
)
def test_compile_gives_the_same_actions(tiny_export, case):
    policy, examples, codes, noises, reference = case
    model = _model(tiny_export, compile=True)
    _check_fp32(_run(model, policy, examples, codes, noises), reference, "compiled")
