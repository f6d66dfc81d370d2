"""Built-in simulated task: a NumPy 2-D table-top world with language-conditioned tasks, a
scripted expert, per-patch object labels (`labels`) and a LIBERO-schema RLDS writer (see
docs/builtin_task.md). TF is only imported by the writer when data is written."""

from builtin_task.env import EVAL_SEED_BASE, MAX_STEPS, SimEnv, eval_seeds, task_for_seed
from builtin_task.expert import (
    expert_action,
    expert_policy,
    make_policy,
    noop_policy,
    random_policy,
    rollout,
)
from builtin_task.tasks import TASK_NAMES, Goal, is_success

__all__ = [
    "EVAL_SEED_BASE",
    "MAX_STEPS",
    "SimEnv",
    "eval_seeds",
    "task_for_seed",
    "expert_action",
    "expert_policy",
    "make_policy",
    "noop_policy",
    "random_policy",
    "rollout",
    "TASK_NAMES",
    "Goal",
    "is_success",
]
