"""AdamW with per-group learning rates, warm-up + cosine/constant schedules, global-norm clipping
and per-stage freezing (the original's per-group learning rates; README "Training").

Every parameter belongs to one group by its path: `vision` (SigLIP + projector), `und` (Gemma-2B and
its embedding), `gen` (generation expert + foresight heads), `act` (action expert + projections),
`vqvae` (always frozen). A frozen group is split off before differentiation, so it gets no gradient,
no optimizer state and stays bit-identical.
"""

from typing import Any, Mapping, Sequence

import jax
import optax

GROUPS = ("vision", "und", "gen", "act", "vqvae")
MU_DTYPES = {"float32": None, "bfloat16": jax.numpy.bfloat16}  # Adam's first moment
ALWAYS_FROZEN = ("vqvae",)
FROZEN = "frozen"
# Never-trained buffers of the original that live among the parameters.
FROZEN_PARAMS = (("foresight", "mask_embedding"),)


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def param_group(path: Sequence[str]) -> str:
    """The optimizer group of a parameter path such as ('stack', 'layers', 'gen', 'q_einsum')."""
    top = path[0]
    if top == "siglip":
        return "vision"
    if top == "embedder":
        return "und"
    if top == "stack":
        return path[2] if path[1] == "layers" else path[1].removeprefix("final_norm_")
    if top == "foresight":
        return "gen"
    if top == "action_io":
        return "act"
    if top == "vqvae":
        return "vqvae"
    raise ValueError(f"Parameter {'/'.join(path)} belongs to no optimizer group.")


def param_labels(params: Any, frozen_groups: Sequence[str]) -> Any:
    """A tree of group names (or 'frozen') with the structure of `params` (the 'params' collection)."""
    unknown = set(frozen_groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"Unknown frozen groups {sorted(unknown)}; valid groups: {GROUPS}.")
    frozen = set(frozen_groups) | set(ALWAYS_FROZEN)

    def label(path, _):
        keys = _keys(path)
        if any(keys[: len(p)] == p for p in FROZEN_PARAMS):
            return FROZEN
        group = param_group(keys)
        return FROZEN if group in frozen else group

    return jax.tree_util.tree_map_with_path(label, params)


def split_frozen(params: Any, labels: Any) -> tuple[Any, Any]:
    """(trainable, frozen): two trees shaped like `params` with None where the other side has a leaf."""
    trainable = jax.tree.map(lambda l, p: None if l == FROZEN else p, labels, params)
    frozen = jax.tree.map(lambda l, p: p if l == FROZEN else None, labels, params)
    return trainable, frozen


def merge_frozen(trainable: Any, frozen: Any) -> Any:
    return jax.tree.map(
        lambda t, f: f if t is None else t, trainable, frozen, is_leaf=lambda x: x is None
    )


def make_schedule(kind: str, peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """'cosine': linear warm-up then cosine decay to 0 at total_steps (as HF's cosine);
    'constant': linear warm-up then constant."""
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1), end_value=0.0
        )
    if kind == "constant":
        if warmup_steps == 0:
            return optax.constant_schedule(peak)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)],
            [warmup_steps],
        )
    raise ValueError(f"Unknown schedule {kind!r}; valid: 'cosine', 'constant'.")


def _decays(path, _) -> bool:
    """Weight decay on weights only: no decay on biases and norm scales."""
    return _keys(path)[-1] not in ("bias", "scale")


def make_optimizer(
    config: Mapping[str, Any], total_steps: int, trainable_labels: Any
) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """The optax transformation over the trainable tree, and each group's schedule (for logging).

    Args:
      config: the `optimizer` config section (lr per group, schedule, warmup_steps, b1, b2, eps,
        weight_decay, clip_norm).
      trainable_labels: group names shaped like the trainable tree (None where frozen).
    """
    groups = sorted({l for l in jax.tree.leaves(trainable_labels)})
    if config.get("mu_dtype", "float32") not in MU_DTYPES:
        raise ValueError(f"optimizer.mu_dtype must be one of {sorted(MU_DTYPES)}.")
    missing = [g for g in groups if g not in config["lr"]]
    if missing:
        raise ValueError(f"optimizer.lr has no learning rate for groups {missing}.")
    schedules = {
        g: make_schedule(config["schedule"], config["lr"][g], config["warmup_steps"], total_steps)
        for g in groups
    }
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(_decays, params)
    per_group = {
        g: optax.adamw(
            schedules[g],
            b1=config["b1"],
            b2=config["b2"],
            eps=config["eps"],
            weight_decay=config["weight_decay"],
            mask=decay_mask,
            # bf16 first moments halve their memory (3.55 B values: 6.6 GiB at full size);
            # BENCHMARKS.md compares the loss curves and closed-loop success of both.
            mu_dtype=MU_DTYPES[config.get("mu_dtype", "float32")],
        )
        for g in groups
    }
    tx = optax.chain(
        optax.clip_by_global_norm(config["clip_norm"]),
        optax.multi_transform(per_group, trainable_labels),
    )
    return tx, schedules
