"""Exports of the `tiny` and `small` sizes (random fp32 weights), built once per session."""

import pytest

from conversion import synthetic as exports
from conversion.synthetic import Export


def _export(tmp_path_factory, size: str) -> Export:
    root = tmp_path_factory.mktemp(f"torch_export_{size}")
    config = exports.model_config(size)
    params = exports.random_params(config, seed=0)
    tokenizer = exports.make_tokenizer(str(root))
    directory = exports.write_export(str(root / "export"), config, params, tokenizer)
    return Export(directory, config, params)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Export:
    return _export(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def small_export(tmp_path_factory) -> Export:
    return _export(tmp_path_factory, "small")
