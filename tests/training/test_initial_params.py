"""`init.params_path` puts a source's parameters in and fills what it lacks from the fresh
initialisation, which is made only when something is missing (it is slow to compile on CPU)."""

import jax
import numpy as np
from flax.traverse_util import flatten_dict
from train_fixtures import tiny_config

from f1_jax.training import checkpoints, setup, sharding
from f1_jax.training.initial_params import load_initial_params


def _abstract_params(tiny_data):
    config = tiny_config(tiny_data)
    return setup.train_setup(config, sharding.mesh_from_config(config.mesh)).abstract_state.params


def _filled(abstract, value: float) -> dict:
    return jax.tree.map(lambda x: np.full(x.shape, value, x.dtype), abstract)


def test_a_partial_source_is_completed_from_the_fresh_initialisation(tiny_data, tmp_path):
    abstract = _abstract_params(tiny_data)
    source = {k: v for k, v in _filled(abstract, 2.0).items() if k != "action_io"}
    checkpoints.save_params(tmp_path / "partial", source)
    calls = []

    def fresh():
        calls.append(1)
        return _filled(abstract, -1.0)

    params = load_initial_params(str(tmp_path / "partial"), "", False, fresh, abstract)
    assert calls == [1]
    for names, value in flatten_dict(params).items():
        want = -1.0 if names[0] == "action_io" else 2.0
        np.testing.assert_array_equal(value, np.full(value.shape, want), err_msg="/".join(names))


def test_a_complete_source_never_makes_the_fresh_initialisation(tiny_data, tmp_path):
    abstract = _abstract_params(tiny_data)
    checkpoints.save_params(tmp_path / "whole", _filled(abstract, 3.0))

    def fresh():
        raise AssertionError("the source holds every parameter: nothing to initialise")

    params = load_initial_params(str(tmp_path / "whole"), "", False, fresh, abstract)
    assert all(np.all(np.asarray(v) == 3.0) for v in jax.tree.leaves(params))
