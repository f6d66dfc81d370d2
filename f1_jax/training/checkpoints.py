"""Orbax checkpoints of the whole run: train state, data-iterator state and a JSON record
(normalisation statistics and the config), saved asynchronously and atomically.

A killed run restarts from the latest complete checkpoint and continues with the batch it would
have seen next.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Abstract arrays that carry their target shardings: restored values land in their shards."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


class RunCheckpoints:
    """Keeps the last `keep` checkpoints plus every multiple of `keep_period` steps."""

    def __init__(
        self,
        directory: str,
        save_every: int,
        keep: int = 3,
        keep_period: int | None = None,
        async_save: bool = True,
    ):
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_period,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0 or self.manager.reached_preemption(step)

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: Any = None,
        record: dict | None = None,
        force: bool = False,
    ) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            import grain  # the data iterator is a grain DatasetIterator

            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if record is not None:
            items["record"] = ocp.args.JsonSave(record)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(
        self, step: int, abstract_state: Any, data_iterator: Any = None
    ) -> tuple[Any, dict | None]:
        """Restores the state into `abstract_state`'s shardings (and the iterator in place)."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        names = self.manager.item_metadata(step)
        if "record" in names and names["record"] is not None:
            items["record"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored.get("record") if "record" in items else None

    def restore_state(self, step: int, abstract_state: Any = None) -> Any:
        """Only the train state (no data iterator), e.g. to serve or inspect the parameters."""
        return self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )["state"]

    def restore_record(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))[
            "record"
        ]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def save_params(path: str | os.PathLike, params: Any) -> None:
    """Writes `{'params': params}` (Orbax StandardCheckpointer, blocking): what `load_params`
    and `init.params_path` / `init.vqvae_path` read."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(path), {"params": params})
        checkpointer.wait_until_finished()


def load_params(path: str, abstract_params: Any) -> Any:
    """Parameters written by `python -m conversion import` ({'params': ...}) into their shards."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No parameter checkpoint at {path}.")
    restored = ocp.StandardCheckpointer().restore(
        os.path.abspath(path), {"params": abstract_params}
    )
    return restored["params"]


def checkpoint_directory(path: str) -> str:
    """The `checkpoints/` directory of a run, given the run's workdir or that directory itself."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No checkpoint directory at {path}.")
    nested = os.path.join(path, "checkpoints")
    return nested if os.path.isdir(nested) else path


def read_only_checkpoints(path: str) -> RunCheckpoints:
    """A RunCheckpoints over an existing run (workdir or checkpoints/), never creating directories.

    Raises FileNotFoundError when the directory does not exist or holds no complete checkpoint.
    """
    directory = checkpoint_directory(path)
    run = RunCheckpoints(directory, save_every=1, async_save=False)
    if run.latest_step() is None:
        raise FileNotFoundError(f"No complete checkpoint in {directory}.")
    return run


def restore_params(directory: str, step: int, abstract_params: Any, use_ema: bool = False) -> Any:
    """Only the (EMA) parameters of a saved train state, into `abstract_params`' shardings.

    Partial restore: the optimizer state is never read, so serving needs no room for Adam moments.
    `directory` is a run's `checkpoints/` dir; abstract_params may carry shardings (e.g. one device).
    """
    key = "ema_params" if use_ema else "params"
    path = os.path.join(os.path.abspath(directory), str(step), "state")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No train state for step {step} at {path}.")
    metadata = ocp.PyTreeCheckpointer().metadata(path)
    tree = getattr(metadata, "item_metadata", None)
    tree = getattr(tree, "tree", tree)
    if tree is not None and hasattr(tree, "keys") and tree.get(key) is None:
        raise KeyError(f"Checkpoint {path} has no {key!r} (saved without EMA?); use_ema={use_ema}.")
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            path,
            args=ocp.args.PyTreeRestore(
                item={key: abstract_params}, restore_args={key: restore_args}, partial_restore=True
            ),
        )
    except ValueError as e:
        raise ValueError(
            f"The parameters in {path} do not fit the model built from its recorded "
            "config (did the model code or configs/models.py change since it was "
            f"trained?): {e}"
        ) from e
    return restored[key]
