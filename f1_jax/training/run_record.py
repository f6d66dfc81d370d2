"""What a run's checkpoint record says: the config, the model, the observation contract, and every
dataset's normalisation statistics and camera keys.

Every checkpoint step holds a JSON record beside the train state (`RunCheckpoints.save`):
{"config": the run's config as a JSON string, "dataset_statistics": {name: {"state", "action",
"norm_mode", ...}}, "dataset_names": [names in mixture order]}. `read_run_record` turns it into
the model config, the observation spec, the tokenizer path and, per dataset, its statistics and
the mapping from standard camera names to the dataset's image keys. Inference (`inference.jax_policy`)
uses one dataset's entry; the export (`python -m conversion export --run`) writes all of them as
the deployment contract (`norm_stats.json`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import ml_collections

from data_pipelines.sources import get_source
from f1_common import transforms
from f1_jax.models.f1 import F1Config, observation_spec
from f1_jax.models.sizes import model_config_from
from f1_jax.training import checkpoints as ckpt


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One checkpoint step of a run, as its record describes it.

    statistics: dataset name -> {"state": stats, "action": stats, "norm_mode", ...} exactly as
      recorded, in mixture order. cameras: dataset name -> {standard camera: dataset image key or
      None}. directory: the run's `checkpoints/` directory.
    """

    config: ml_collections.ConfigDict
    model_config: F1Config
    spec: transforms.ObservationSpec
    tokenizer_path: str
    statistics: Mapping[str, Mapping[str, Any]]
    cameras: Mapping[str, Mapping[str, str | None]]
    step: int
    directory: str

    @property
    def dataset_names(self) -> list[str]:
        return list(self.statistics)

    def check_dataset(self, name: str | None) -> str:
        """`name`, or the mixture's first dataset when None; KeyError naming the known ones."""
        name = self.dataset_names[0] if name is None else name
        if name not in self.statistics:
            raise KeyError(
                f"Unknown dataset {name!r}; this checkpoint has statistics for "
                f"{self.dataset_names}."
            )
        return name

    def deployment_contract(
        self,
        default_dataset: str | None = None,
        tokenizer_path: str | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> transforms.DeploymentContract:
        """The run's observation contract with every dataset's statistics and cameras."""
        datasets = {
            name: {**stats, "cameras": dict(self.cameras[name])}
            for name, stats in self.statistics.items()
        }
        return transforms.DeploymentContract(
            spec=self.spec,
            datasets=datasets,
            default_dataset=self.check_dataset(default_dataset),
            tokenizer_path=tokenizer_path or self.tokenizer_path,
            source=dict(source or {}),
        )


def read_run_record(path: ckpt.PathLike, step: int | None = None) -> RunRecord:
    """The record of a run (workdir or its checkpoints/, local or a URI) at `step` (default:
    the latest complete one).

    Raises FileNotFoundError for a missing directory, no complete checkpoint or a missing step.
    """
    run = ckpt.read_only_checkpoints(path)
    step = run.latest_step() if step is None else int(step)
    if step not in run.all_steps():
        raise FileNotFoundError(
            f"No checkpoint for step {step} in {run.directory}; steps: {run.all_steps()}"
        )
    record = run.restore_record(step)
    config = ml_collections.ConfigDict(json.loads(record["config"]))
    model_config = model_config_from(config.model)
    names = list(record["dataset_names"])
    recorded = record["dataset_statistics"]
    missing = [n for n in names if n not in recorded]
    if missing:
        raise ValueError(
            f"The record of step {step} in {run.directory} lists datasets {missing} without "
            f"statistics (it has {sorted(recorded)})."
        )
    configured = {ds["name"]: ds for ds in config.data.datasets}
    unknown = [n for n in names if n not in configured]
    if unknown:
        raise ValueError(
            f"The record of step {step} in {run.directory} has statistics for {unknown}, which "
            f"its config's data.datasets ({sorted(configured)}) does not define."
        )
    cameras = {
        n: dict(configured[n].get("cameras") or get_source(configured[n]["source"]).DEFAULT_CAMERAS)
        for n in names
    }
    return RunRecord(
        config=config,
        model_config=model_config,
        spec=observation_spec(model_config, config.data),
        tokenizer_path=config.data.tokenizer_path,
        statistics={name: recorded[name] for name in names},
        cameras=cameras,
        step=step,
        directory=str(run.directory),
    )
