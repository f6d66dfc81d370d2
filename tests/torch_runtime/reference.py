"""f1_jax's own sampling on a preprocessed example: the reference the PyTorch runtime must match."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from conversion import engine
from conversion.synthetic import Export
from f1_jax.models.f1 import F1, model_inputs, sample_actions

MODEL_KEYS = ("images", "image_mask", "tokens", "token_mask", "state", "gen_frames")


# Jitted functions by (config, precision / purpose): one compilation per model and precision.
_COMPILED: dict = {}


def _params(export: Export) -> dict:
    return {"params": engine.unflatten({k: jnp.asarray(v) for k, v in export.params.items()})}


def _sampler(export: Export, precision: str):
    key = (export.config, precision, "sample")
    if key not in _COMPILED:
        model = F1(dataclasses.replace(export.config, precision=precision))
        _COMPILED[key] = jax.jit(
            lambda p, i, n: sample_actions(model, p, i, jax.random.key(0), n, return_foresight=True)
        )
    return _COMPILED[key]


def jax_reference(
    export: Export, example: dict, noise: np.ndarray, precision: str = "parity"
) -> dict[str, np.ndarray]:
    """f1_jax `sample_actions` (jitted) on one preprocessed example with the given noise.

    Returns normalised actions [chunk, action_dim], foresight tokens [n], logits [n, V] and the
    decoded image [h, w, 3] in [-1, 1].
    """
    inputs = model_inputs({k: example[k][None] for k in MODEL_KEYS}, 4)
    run = _sampler(export, precision)
    actions, foresight = run(_params(export), inputs, jnp.asarray(noise)[None])
    return {
        "actions": np.asarray(actions[0]),
        "tokens": np.asarray(foresight["tokens"][0]),
        "logits": np.asarray(foresight["logits"][0]),
        "image": np.asarray(foresight["image"][0]),
    }


def jax_history_codes(export: Export, example: dict) -> np.ndarray:
    """The JAX VQ-VAE's codes [T, sum(pn^2)] of the example's history frames."""
    key = (export.config, "encode")
    if key not in _COMPILED:
        model = F1(export.config)
        _COMPILED[key] = jax.jit(lambda p, h: model.apply(p, h, method=F1.encode_frames)[1])
    history = model_inputs({k: example[k][None] for k in MODEL_KEYS}, 4)["history"]
    return np.asarray(_COMPILED[key](_params(export), history)[0])
