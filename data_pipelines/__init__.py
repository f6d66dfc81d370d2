"""RLDS / AgiBot sources -> standard schema -> windows -> normalise -> augment -> mix -> batches.

Public entry points (see data_pipelines/README_DATA.md):
  DataConfig, DatasetConfig                       data_pipelines.config
  make_train_iterator(config, seed, process_index, process_count)
  dataset_statistics(config), unnormalize_actions(actions, stats), BATCH_SPEC
                                                  data_pipelines.pipeline
TensorFlow / TFDS are imported only where data is read or written; models are never imported.
"""

from data_pipelines.config import DataConfig, DatasetConfig
from data_pipelines.pipeline import (
    BATCH_SPEC,
    dataset_statistics,
    make_train_iterator,
    unnormalize_actions,
)

__all__ = [
    "BATCH_SPEC",
    "DataConfig",
    "DatasetConfig",
    "dataset_statistics",
    "make_train_iterator",
    "unnormalize_actions",
]
