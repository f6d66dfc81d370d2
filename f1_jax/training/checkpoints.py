"""A run's directory and its Orbax checkpoints, local or remote (`gs://...`), through `etils.epath`.

A run directory holds `checkpoints/<step>/` (train state, data-iterator state and a JSON record
with the normalisation statistics and the config, saved asynchronously and atomically),
`metrics.jsonl`, `config.json` (the config of the latest start), `configs/` (every config the
run was started or resumed with), `tensorboard/` and, for the built-in task, `evaluation/`.
A killed run restarts from the latest complete checkpoint and continues with the batch it would
have seen next. Paths are never made absolute when they are URIs.
"""

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

PathLike = str | epath.PathLike


def _grain():
    """The grain module, or None where it is not installed (an inference-only machine reads
    parameters and records, never a data iterator)."""
    try:
        import grain  # deferred: inference images may lack grain
    except ImportError:
        return None
    return grain


def as_path(path: PathLike) -> epath.Path:
    """`path` as an epath.Path: URIs (scheme://...) unchanged, local paths made absolute (Orbax
    wants absolute paths)."""
    if "://" in str(path):
        return epath.Path(path)
    return epath.Path(path).expanduser().absolute()


def exists(path: PathLike) -> bool:
    return as_path(path).exists()


def write_text(path: PathLike, text: str) -> None:
    """Writes a small text file (local or remote) whole."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class RunCheckpoints:
    """Keeps the last `keep` checkpoints plus every multiple of `keep_period` steps."""

    def __init__(
        self,
        directory: PathLike,
        save_every: int,
        keep: int = 3,
        keep_period: int | None = None,
        async_save: bool = True,
        read_only: bool = False,
        use_ocdbt: bool = True,
    ):
        """use_ocdbt: Orbax's OCDBT array store (one database per process, fewer files; the
        default). False writes one zarr array per parameter instead, for storage that lacks the
        conditional writes OCDBT relies on (some S3-compatible stores, storage emulators).
        Either format restores."""
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_period,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save,
        )
        self.directory = as_path(directory)
        handlers = {
            "state": ocp.StandardCheckpointHandler(use_ocdbt=use_ocdbt),
            "record": ocp.JsonCheckpointHandler(),
        }
        if _grain() is not None:  # the data iterator's position (training always has grain)
            handlers["data"] = _grain().checkpoint.CheckpointHandler()
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

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
            items["data"] = _grain().checkpoint.CheckpointSave(data_iterator)
        if record is not None:
            items["record"] = ocp.args.JsonSave(record)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore_data(self, step: int, data_iterator: Any) -> None:
        """Puts the data iterator back where step `step` left it (in place)."""
        self.manager.restore(
            step,
            args=ocp.args.Composite(data=_grain().checkpoint.CheckpointRestore(data_iterator)),
        )

    def restore_state(self, step: int, abstract_state: Any = None) -> Any:
        """Only the train state (no data iterator), into `abstract_state`'s shardings."""
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


class RunDir:
    """The files of one run directory (nothing is created until a writer needs it)."""

    def __init__(self, workdir: PathLike):
        self.path = as_path(workdir)
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"
        self.config = self.path / "config.json"
        self.config_history = self.path / "configs"
        self.tensorboard = self.path / "tensorboard"

    def files(self) -> dict[str, epath.Path]:
        return {
            "checkpoints": self.checkpoints,
            "metrics": self.metrics,
            "config": self.config,
            "config_history": self.config_history,
            "tensorboard": self.tensorboard,
        }

    def latest_step(self) -> int | None:
        """The latest complete checkpoint's step, or None when there is none. Lists the
        directory only (no CheckpointManager, whose creation is a collective on every process)."""
        if not self.checkpoints.exists():
            return None
        steps = ocp.path.step.checkpoint_steps(self.checkpoints)
        return max(steps) if steps else None


def save_params(path: PathLike, params: Any) -> None:
    """Writes `{'params': params}` (Orbax StandardCheckpointer, blocking): what `load_params`
    and `init.params_path` / `init.vqvae_path` read."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(as_path(path), {"params": params})
        checkpointer.wait_until_finished()


def load_params(path: PathLike, abstract_params: Any) -> Any:
    """Parameters written by `save_params` (`python -m conversion import`) into their shards."""
    path = as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"No parameter checkpoint at {path}.")
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, {"params": abstract_params})["params"]


def checkpoint_directory(path: PathLike) -> epath.Path:
    """The `checkpoints/` directory of a run, given the run's workdir or that directory itself."""
    path = as_path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint directory at {path}.")
    nested = path / "checkpoints"
    return nested if nested.is_dir() else path


def read_only_checkpoints(path: PathLike) -> RunCheckpoints:
    """A RunCheckpoints over an existing run (workdir or checkpoints/), never creating anything.

    Raises FileNotFoundError when the directory does not exist or holds no complete checkpoint.
    """
    directory = checkpoint_directory(path)
    run = RunCheckpoints(directory, save_every=1, async_save=False, read_only=True)
    if run.latest_step() is None:
        raise FileNotFoundError(f"No complete checkpoint in {directory}.")
    return run


def tree_metadata(path: PathLike) -> Any:
    """The tree of a PyTree checkpoint's metadata (one `ArrayMetadata` etc. per leaf)."""
    metadata = ocp.PyTreeCheckpointer().metadata(as_path(path))
    tree = getattr(metadata, "item_metadata", metadata)
    return getattr(tree, "tree", tree)


def restore_on_host(path: PathLike, keys: tuple[str, ...] | None = None) -> Any:
    """A PyTree checkpoint as NumPy arrays in host memory, whatever topology saved it.

    No target tree: the checkpoint's own metadata tree is the target and every array is restored
    as `np.ndarray` (openpi restores its checkpoints this way), so parameters saved sharded over
    a pod's devices restore on a single CPU host, without touching any accelerator.
    `keys`: restore only these top-level entries (partial restore).
    """
    path = as_path(path)
    tree = tree_metadata(path)
    item = tree if keys is None else {k: tree[k] for k in keys}
    restore_args = jax.tree.map(
        lambda m: (
            ocp.RestoreArgs(restore_type=np.ndarray)
            if isinstance(m, ocp.metadata.ArrayMetadata)
            else ocp.RestoreArgs()
        ),
        item,
    )
    return ocp.PyTreeCheckpointer().restore(
        path,
        args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=keys is not None
        ),
    )


def _params_key(path: epath.Path, use_ema: bool) -> str:
    key = "ema_params" if use_ema else "params"
    if not path.is_dir():
        raise FileNotFoundError(f"No train state at {path}.")
    tree = tree_metadata(path)
    if tree is not None and hasattr(tree, "keys") and tree.get(key) is None:
        raise KeyError(f"Checkpoint {path} has no {key!r} (saved without EMA?); use_ema={use_ema}.")
    return key


def restore_params(
    directory: PathLike, step: int, abstract_params: Any, use_ema: bool = False
) -> Any:
    """Only the (EMA) parameters of a saved train state, into `abstract_params`' shardings.

    Partial restore: the optimizer state is never read, so serving needs no room for Adam moments.
    `directory` is a run's `checkpoints/` dir; abstract_params may carry shardings (e.g. one device).
    """
    path = as_path(directory) / str(step) / "state"
    if not path.is_dir():
        raise FileNotFoundError(f"No train state for step {step} at {path}.")
    key = _params_key(path, use_ema)
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
            "config (did the model code or f1_jax/models/sizes.py change since it was "
            f"trained?): {e}"
        ) from e
    return restored[key]


def restore_params_on_host(directory: PathLike, step: int, use_ema: bool = False) -> Any:
    """Only the (EMA) parameters of a saved train state, as NumPy arrays in host memory, whatever
    topology saved them (`restore_on_host`); the optimizer state is never read."""
    path = as_path(directory) / str(step) / "state"
    if not path.is_dir():
        raise FileNotFoundError(f"No train state for step {step} at {path}.")
    key = _params_key(path, use_ema)
    return restore_on_host(path, keys=(key,))[key]


def _has_step_dirs(path: epath.Path) -> bool:
    return path.is_dir() and any(p.name.isdigit() for p in path.iterdir())


def params_source(path: PathLike) -> tuple[str, epath.Path, int | None]:
    """What `init.params_path` points at: ("run", its checkpoints dir, step) for a run's workdir
    (`WORKDIR`: latest step, `WORKDIR:STEP`: that step) or its checkpoints dir, ("params", dir,
    None) for a parameter checkpoint (`python -m conversion import` output or its `params/`)."""
    text, step = str(path), None
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit():
        text, step = head, int(tail)
    base = as_path(text)
    if not base.exists():
        raise FileNotFoundError(
            f"No parameters at {base} (give a run's workdir or an import output)."
        )
    if (base / "checkpoints").is_dir() or _has_step_dirs(base):
        run = read_only_checkpoints(base)
        if step is None:
            step = run.latest_step()
        elif step not in run.all_steps():
            raise FileNotFoundError(
                f"{base} has no checkpoint at step {step}; steps: {run.all_steps()}"
            )
        return "run", run.directory, step
    if step is not None:
        raise ValueError(f"{base} is not a run directory; ':{step}' selects a step of a run.")
    if (base / "params").is_dir():
        return "params", base / "params", None  # an import output: OUTPUT/params/ + sidecar
    return "params", base, None
