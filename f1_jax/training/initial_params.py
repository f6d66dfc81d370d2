"""Starting weights of a new run: `init.params_path` (a run or an import output) and
`init.vqvae_path`, restored into their shards, the rest initialised fresh.

A source may hold every parameter (a run of an earlier stage, an F1 import, `compose-stage1`) or
part of them (a pi0 or PaliGemma import): what it has is restored, what it lacks keeps the fresh
initialisation, and both are logged by name. A parameter whose shape differs from the model's
stops the run with every mismatch listed.
"""

import logging
from typing import Callable

import jax
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict, unflatten_dict

from f1_jax.training import checkpoints

log = logging.getLogger("f1_jax")


def _stored_shapes(path) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Parameter path -> shape of every array an Orbax checkpoint holds."""
    metadata = ocp.PyTreeCheckpointer().metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    out = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = tuple(str(getattr(k, "key", k)) for k in keys)
        out[names] = tuple(leaf.shape)
    return out


def restore_available(path, key: str, abstract: dict) -> tuple[dict, list[str]]:
    """Restores from the Orbax tree at `path` every parameter of `abstract` (nested, with
    shardings) found under `key`; returns (flat {path tuple: array}, names of those missing)."""
    stored = _stored_shapes(path)
    flat = flatten_dict(abstract)
    found, missing, wrong = {}, [], []
    for names, leaf in flat.items():
        shape = stored.get((key, *names))
        if shape is None:
            missing.append("/".join(names))
        elif shape != tuple(leaf.shape):
            wrong.append(f"{'/'.join(names)}: stored {shape}, model {tuple(leaf.shape)}")
        else:
            found[names] = leaf
    if wrong:
        raise ValueError(
            f"{path} does not fit this model (another model size?):\n  " + "\n  ".join(wrong)
        )
    if not found:
        return {}, missing
    item = {key: unflatten_dict(found)}
    restored = ocp.PyTreeCheckpointer().restore(
        path,
        args=ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
        ),
    )
    return flatten_dict(restored[key]), missing


def _groups(names: list[str]) -> list[str]:
    """Parameter paths summarised as their subtrees (`stack/layers/gen`, `siglip`, ...)."""
    out = set()
    for name in names:
        parts = name.split("/")
        out.add("/".join(parts[:3]) if parts[0] == "stack" and parts[1] == "layers" else parts[0])
    return sorted(out)


def load_initial_params(
    params_path: str, vqvae_path: str, use_ema: bool, fresh: Callable[[], dict], abstract: dict
) -> dict:
    """What `params_path` and `vqvae_path` provide, the rest from `fresh()`.

    fresh: makes freshly initialised (sharded) parameters; called only when the sources lack
    some, so a run whose sources hold everything never compiles the random initialisation.
    abstract: the parameters' abstract values with shardings (the restore targets).
    """
    merged = {}
    if params_path:
        kind, path, step = checkpoints.params_source(params_path)
        if kind == "run":
            source = checkpoints.as_path(path) / str(step) / "state"
            key = "ema_params" if use_ema else "params"
            described = f"run {path} step {step} ({key})"
        else:
            if use_ema:
                raise ValueError(f"init.use_ema needs a run, but {params_path} is an import.")
            source, key, described = path, "params", f"parameters {path}"
        restored, missing = restore_available(source, key, abstract)
        if not restored:
            raise ValueError(f"{described} holds no parameter of this model.")
        merged.update(restored)
        log.info(
            "Initialised from %s: took %s; fresh: %s.",
            described,
            _groups(["/".join(k) for k in restored]),
            _groups(missing) or "nothing",
        )
    if vqvae_path:
        kind, path, _ = checkpoints.params_source(vqvae_path)
        if kind == "run":
            raise ValueError(
                f"init.vqvae_path must be a VQ-VAE checkpoint, got a run: {vqvae_path}"
            )
        # A VQ-VAE checkpoint is {"params": <the vqvae subtree>} (f1_jax.models.vqvae.VQVAE).
        restored, missing = restore_available(path, "params", abstract["vqvae"])
        if missing:
            raise ValueError(f"{path} lacks VQ-VAE parameters: {missing[:5]}")
        merged.update({("vqvae", *k): v for k, v in restored.items()})
        log.info("VQ-VAE from %s.", path)
    if len(merged) < len(flatten_dict(abstract)):
        merged = {**flatten_dict(fresh()), **merged}
    return unflatten_dict(merged)
