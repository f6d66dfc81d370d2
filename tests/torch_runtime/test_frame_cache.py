"""The frame-code cache: closed-loop episodes give bit-identical actions and foresight with and
without it, and the VQ-VAE encoder sees each frame of an episode once."""

import numpy as np
import pytest
import torch

from conversion import synthetic as exports
from f1_common import transforms
from f1_common.frame_cache import FrameCodeCache
from f1_torch import TorchPolicy, load_model

# Two episodes: (environment steps, steps that infer; the others only observe). The second one
# reaches frame indices the first cached, which a missing reset() would serve stale.
EPISODES = ((16, (0, 2, 5, 6, 9, 15)), (10, (0, 6, 9)))


@pytest.fixture(scope="module")
def policies(tiny_export):
    """One model behind two policies: with and without the cache. Sampled foresight (top-k /
    top-p of the export's config), so the seeds matter too."""
    model = load_model(tiny_export.directory)
    contract = transforms.read_deployment_contract(tiny_export.directory)
    frames = []  # frames each encoder call received
    model.vae.encoder.register_forward_hook(lambda m, args, out: frames.append(args[0].shape[0]))
    cached = TorchPolicy(model, contract, frame_cache=True)
    uncached = TorchPolicy(model, contract, frame_cache=False)
    return cached, uncached, frames


def _run(policy: TorchPolicy, config, frames: list) -> tuple[list[dict], int, set]:
    """Both episodes; returns the outputs, the frames encoded and the distinct (episode, frame)
    indices the inferences looked at."""
    frames.clear()
    outputs, seen = [], set()
    for episode, (length, infer_at) in enumerate(EPISODES):
        policy.reset()
        for t, obs in enumerate(exports.observations(config, length, seed=10 + episode)):
            if t not in infer_at:
                policy.observe(obs)
                continue
            window = policy.transform.history.offsets
            seen |= {(episode, max(t + o, 0)) for o in window}
            outputs.append(policy.infer(obs, seed=100 * episode + t, return_foresight=True))
    return outputs, sum(frames), seen


def test_cached_and_uncached_runs_are_bit_identical(tiny_export, policies):
    cached, uncached, frames = policies
    with_cache, encoded_cached, seen = _run(cached, tiny_export.config, frames)
    without, encoded_uncached, _ = _run(uncached, tiny_export.config, frames)
    for a, b in zip(with_cache, without, strict=True):
        assert set(a) == {"actions", "foresight_tokens", "foresight_image"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # Each distinct frame once with the cache; the whole window on every call without.
    assert encoded_cached == len(seen) == cached.encoded_frames
    assert encoded_uncached == len(with_cache) * len(cached.spec.history_offsets)


def test_the_cache_keeps_only_the_current_window():
    cache = FrameCodeCache()
    encoded = []

    def encode(frames):
        encoded.append(len(frames))
        return torch.arange(len(frames))[:, None] * torch.ones(1, 3, dtype=torch.int64)

    frames = np.zeros((4, 2, 2, 3), np.uint8)
    codes = cache.codes(frames, np.array([0, 0, 0, 0]), encode)
    assert encoded == [1] and torch.stack(codes).shape == (4, 3) and len(cache) == 1
    cache.codes(frames, np.array([0, 3, 6, 9]), encode)
    assert encoded == [1, 3]
    cache.codes(frames, np.array([3, 6, 9, 12]), encode)
    assert encoded == [1, 3, 1] and len(cache) == 4  # frame 0 left the window: dropped
    cache.clear()
    assert len(cache) == 0
