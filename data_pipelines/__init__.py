"""RLDS / AgiBot sources -> standard schema -> windows -> normalise -> augment -> mix -> batches.

Public entry points (docs/data.md):
  DataConfig, DatasetConfig                       data_pipelines.config
  make_train_iterator(config, seed, process_index, process_count)
  dataset_statistics(config), HOST_ONLY_KEYS      data_pipelines.pipeline
Turning a sample into model inputs is the observation contract, `f1_common.transforms`, shared with
inference. TensorFlow / TFDS are imported only where data is read or written; models are never
imported.
"""

from data_pipelines.config import DataConfig, DatasetConfig
from data_pipelines.pipeline import HOST_ONLY_KEYS, dataset_statistics, make_train_iterator

__all__ = [
    "HOST_ONLY_KEYS",
    "DataConfig",
    "DatasetConfig",
    "dataset_statistics",
    "make_train_iterator",
]
