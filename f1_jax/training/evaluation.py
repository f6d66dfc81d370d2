"""Held-out evaluation during training: losses, action error (normalised and in robot units),
foresight accuracy, and a picture of predicted next to true foresight frames."""

import jax
import numpy as np

from data_pipelines import DataConfig, make_train_iterator
from data_pipelines.pipeline import eval_config
from f1_common import transforms
from f1_jax.training.setup import device_batch


def foresight_strip(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[N, h, w, 3] predicted and true next frames in [-1, 1] -> one uint8 picture, pairs in rows."""
    rows = [np.concatenate([p, t], axis=1) for p, t in zip(predicted, target)]
    return transforms.foresight_to_uint8(np.concatenate(rows, axis=0))


def evaluate(
    eval_step, params, data_config: DataConfig, stats: dict, mesh, num_batches: int, seed: int
) -> tuple[dict[str, float], np.ndarray | None]:
    """Mean metrics over `num_batches` held-out batches and a foresight picture of the first.

    stats: the run's dataset statistics ({name: {"action", "norm_mode", ...}}) for robot units.
    """
    iterator = make_train_iterator(
        eval_config(data_config), seed, jax.process_index(), jax.process_count()
    )
    names = [d.name for d in data_config.datasets]
    totals: dict[str, list[float]] = {}
    picture = None
    for _, batch in zip(range(num_batches), iterator):
        out = jax.device_get(eval_step(params, device_batch(batch, mesh)))
        for name, value in out["metrics"].items():
            totals.setdefault(name, []).append(float(value))
        # Robot units: un-normalise per dataset with the statistics the model was trained with.
        local = out["actions"][: len(batch["dataset_index"])]
        errors = []
        for row, d in enumerate(batch["dataset_index"]):
            dim = int(batch["action_mask"][row].sum())
            valid = ~batch["action_is_pad"][row]
            entry = stats[names[d]]
            pred = transforms.unnormalize(local[row], entry["action"], entry["norm_mode"])[
                ..., :dim
            ]
            true = transforms.unnormalize(
                batch["actions"][row], entry["action"], entry["norm_mode"]
            )
            errors.append(np.mean(np.square(pred - true[..., :dim])[valid]))
        totals.setdefault("action_mse_robot_units", []).append(float(np.mean(errors)))
        if picture is None:
            picture = foresight_strip(out["foresight_image"][:4], out["target_frame"][:4])
    return {k: float(np.mean(v)) for k, v in totals.items()}, picture
