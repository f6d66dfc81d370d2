"""Shared test set-up.

Eight simulated CPU devices (set before JAX starts) so sharding tests can build real meshes, and
fp32 matmuls at full precision so parity tolerances are meaningful.
"""

import os

# LLVM at level 1 for the CPU programs: the tests run many small programs a few times each, so
# compiling dominates, and level 1 compiles about 20 % faster (tests/models/test_f1.py: 213 ->
# 171 s) with the same IEEE semantics (no fast math at any level). Subprocess tests pass it on.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}"
).strip()

import jax  # noqa: E402  (after XLA_FLAGS)

jax.config.update("jax_default_matmul_precision", "highest")

# Several tests compile the same train step again (a resumed run is a new process in real life);
# a persistent compilation cache shared by the test workers makes the repeats nearly free.
import tempfile  # noqa: E402

jax.config.update(
    "jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "f1_jax_test_compile_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

from run_fixtures import policy, sim_run  # noqa: E402,F401  (session fixtures for every folder)


# The longest tests first, so that the two test workers (`-n 2`) finish together instead of one
# waiting on a long test picked up last.
SLOW_FIRST = (
    "training/test_two_process_preemption.py",
    "training/test_stage_journey.py",
    "test_readme_walk.py",
    "training/test_remote_workdir.py",
    "training/test_train_loop.py",
    "libero_eval/test_libero_sim_isolated.py",
    "training/test_stage_configs.py",
    "models/test_f1.py",
    "training/test_frame_codes.py",
    "torch_runtime/test_parity.py",
    "policy/test_policy_sources.py",
    "training/test_aot.py",
    "libero_eval/test_libero_sim_isolated.py",
    "serving/test_serve.py",
    "training/test_frame_codes_two_process.py",
    "conversion/test_conv_release_stats.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order
