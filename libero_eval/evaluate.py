"""Closed-loop LIBERO evaluation: episodes over the suites' fixed init states, in parallel
simulator processes, with results written after every episode (docs/libero.md)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import time
import traceback
from collections import deque
from collections.abc import Sequence
from typing import Any

import av
import numpy as np
import tqdm

from libero_eval import conventions, results, simulator
from libero_eval.policies import ServerPolicy, load_policy


@dataclasses.dataclass(frozen=True)
class Settings:
    """One evaluation. Exactly one of checkpoint (with backend) and server.

    tasks: task ids (default: every task of the suite); episodes: per task, init states 0..n-1;
    max_steps: policy steps after the settle steps (default: the suite's limit);
    replan_steps: actions executed per inferred chunk (at most the chunk);
    video_episodes: episode indices recorded as mp4 for every task.
    """

    suite: str
    output: str
    checkpoint: str | None = None
    backend: str = "jax"
    server: str | None = None
    tasks: tuple[int, ...] | None = None
    episodes: int = conventions.EPISODES_PER_TASK
    max_steps: int | None = None
    replan_steps: int = 5
    seed: int = conventions.ENV_SEED
    workers: int = 1
    video_episodes: tuple[int, ...] = (0,)
    dataset: str | None = None
    server_image_size: int | None = None
    server_keys: str = "auto"
    binarize_gripper: bool = False
    assets: str | None = None
    progress: bool = True

    def __post_init__(self):
        if (self.checkpoint is None) == (self.server is None):
            raise ValueError("give exactly one of --checkpoint and --server")
        if self.suite not in conventions.SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; expected one of {conventions.SUITES}")
        if self.episodes < 1 or self.workers < 1 or self.replan_steps < 1:
            raise ValueError("episodes, workers and replan_steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    @property
    def step_limit(self) -> int:
        return self.max_steps or conventions.MAX_STEPS[self.suite]

    def meta(self) -> dict[str, Any]:
        """What results.json records; results.PROTOCOL_KEYS must agree on a resume."""
        if self.server is not None:
            policy = {
                "server": self.server,
                "image_size": self.server_image_size,
                "keys": self.server_keys,
            }
        else:
            policy = {
                "checkpoint": os.path.abspath(self.checkpoint),
                "backend": self.backend,
                "dataset": self.dataset,
            }
        return {
            "suite": self.suite,
            "policy": policy,
            "max_steps": self.step_limit,
            "settle_steps": conventions.SETTLE_STEPS,
            "replan_steps": self.replan_steps,
            "seed": self.seed,
            "resolution": conventions.RESOLUTION,
            "binarize_gripper": self.binarize_gripper,
        }


def make_policy(settings: Settings):
    if settings.server is not None:
        return ServerPolicy(settings.server, settings.server_image_size, settings.server_keys)
    return load_policy(settings.checkpoint, settings.backend, settings.dataset)


def seed_path(seed: int, task: int, episode: int, call: int) -> tuple[int, int, int, int]:
    """The seed path of one inference (the interface's `infer(..., seed=path)`): a function of
    where it happens, not of the worker or the order, so resumed and parallel runs agree."""
    return (int(seed), int(task), int(episode), int(call))


def run_episode(
    sim: simulator.SimTask,
    policy,
    episode: int,
    max_steps: int,
    replan_steps: int,
    seed: int,
    record: bool = False,
    binarize_gripper: bool = False,
) -> dict[str, Any]:
    """One episode: reset to init state `episode`, settle with no-ops, then infer a chunk and
    execute its first `replan_steps` actions until success or `max_steps` policy steps.

    Returns task, episode, success, steps (policy steps taken), inferences, seconds,
    cpu_seconds, policy_seconds and,
    if record, frames (uint8 [256, 512, 3]: primary | wrist, as the policy saw them).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    raw = sim.reset(episode)
    for _ in range(conventions.SETTLE_STEPS):  # a success while settling does not count
        raw, _ = sim.step(conventions.NOOP_ACTION)
    policy.reset()
    plan: deque[np.ndarray] = deque()
    frames, calls, policy_seconds = [], 0, 0.0
    success, steps = False, 0
    while steps < max_steps:
        obs = conventions.observation(raw, sim.instruction)
        if record:
            frames.append(np.concatenate([obs["primary"], obs["wrist"]], axis=1))
        if not plan:
            t = time.perf_counter()
            out = policy.infer(obs, seed=seed_path(seed, sim.task_id, episode, calls))
            policy_seconds += time.perf_counter() - t
            actions = conventions.check_actions(out["actions"])
            plan.extend(actions[:replan_steps])
            calls += 1
        else:
            policy.observe(obs)  # history offsets count environment steps
        action = plan.popleft()
        if binarize_gripper:  # OpenVLA-OFT's evaluator: the gripper fully open or closed
            action = action.copy()
            action[-1] = conventions.GRIPPER_CLOSE if action[-1] > 0 else conventions.GRIPPER_OPEN
        raw, success = sim.step(action)
        steps += 1
        if success:
            break
    if record:
        final = conventions.observation(raw, sim.instruction)
        frames.append(np.concatenate([final["primary"], final["wrist"]], axis=1))
    out = {
        "task": sim.task_id,
        "episode": episode,
        "success": bool(success),
        "steps": steps,
        "inferences": calls,
        "seconds": round(time.perf_counter() - start, 3),
        # this process's CPU time (MuJoCo, the software renderer's threads, the policy): the
        # cost on a shared machine, where the wall time depends on the neighbours
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "policy_seconds": round(policy_seconds, 3),
    }
    if record:
        out["frames"] = frames
    return out


def write_video(path: str, frames: Sequence[np.ndarray], fps: int = 20) -> None:
    """H.264 mp4 at the simulator's control rate (20 Hz: real time)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path + ".tmp", "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(path + ".tmp", path)


def video_path(output: str, task: int, episode: int, success: bool) -> str:
    outcome = "success" if success else "failure"
    return os.path.join(output, "videos", f"task{task:02d}_episode{episode:03d}_{outcome}.mp4")


def _work(settings: Settings, jobs, sink, worker: int, reraise: bool = False) -> None:
    """A worker: its own simulator and policy (or server connection); episodes from `jobs`
    (task, episode) until None; each result, or the error, to `sink` (reraise: in-process, the
    error itself propagates)."""
    try:
        simulator.configure(settings.assets)
        policy, sim = None, None
        while True:
            job = jobs.get()
            if job is None:
                break
            task, episode = job
            if policy is None:
                policy = make_policy(settings)
            if sim is None or sim.task_id != task:
                if sim is not None:
                    sim.close()
                sim = simulator.SimTask(settings.suite, task, settings.seed)
            record = episode in settings.video_episodes
            ep = run_episode(
                sim,
                policy,
                episode,
                settings.step_limit,
                settings.replan_steps,
                settings.seed,
                record=record,
                binarize_gripper=settings.binarize_gripper,
            )
            if record:
                frames = ep.pop("frames")
                path = video_path(settings.output, task, episode, ep["success"])
                write_video(path, frames)
                ep["video"] = os.path.relpath(path, settings.output)
            ep["worker"] = worker
            sink.put(("episode", ep))
        if sim is not None:
            sim.close()
    except BaseException as e:  # the parent stops the run and shows this
        if reraise:
            raise
        sink.put(("error", f"worker {worker}: {type(e).__name__}: {e}\n{traceback.format_exc()}"))


class _Inline:
    """A one-worker run in this process (no spawn, no second policy load): jobs from a list,
    each message handed straight to `handle`, so results.json is written after every episode."""

    def __init__(self, items=(), handle=None):
        self.items, self.handle = deque(items), handle

    def get(self, *args, **kwargs):
        return self.items.popleft()

    def put(self, message):
        self.handle(*message)


def run(settings: Settings) -> dict[str, Any]:
    """Evaluates and returns the results (also in settings.output/results.json); resumes the
    episodes already in an earlier results.json of the same protocol."""
    simulator.configure(settings.assets)
    bench = simulator.suite(settings.suite)
    tasks = list(settings.tasks) if settings.tasks is not None else list(range(bench.n_tasks))
    bad = [t for t in tasks if not 0 <= t < bench.n_tasks]
    if bad:
        raise ValueError(f"{settings.suite} has tasks 0..{bench.n_tasks - 1}; got {bad}")
    instructions = {t: str(bench.get_task(t).language) for t in tasks}
    meta = settings.meta()
    meta["tasks"], meta["episodes_per_task"] = tasks, settings.episodes
    meta["install"] = simulator.describe_install()
    done = results.load(settings.output, meta)
    finished = {(int(e["task"]), int(e["episode"])) for e in done}
    todo = [(t, e) for t in tasks for e in range(settings.episodes) if (t, e) not in finished]
    planned = len(finished) + len(todo)
    state = {"results": results.write(settings.output, meta, done, instructions, planned)}
    bar = tqdm.tqdm(
        total=planned,
        initial=planned - len(todo),
        desc=settings.suite,
        unit="episode",
        disable=not settings.progress,
        dynamic_ncols=True,
    )

    def handle(kind: str, payload: Any) -> None:
        if kind == "error":
            raise RuntimeError(f"an evaluation worker failed:\n{payload}")
        done.append(payload)
        state["results"] = results.write(settings.output, meta, done, instructions, planned)
        s = state["results"]["suite"]
        bar.set_postfix(success=f"{s['successes']}/{s['episodes']}", refresh=False)
        bar.update(1)

    workers = min(settings.workers, len(todo))
    processes, queues = [], []
    try:
        if workers == 1:
            _work(settings, _Inline([*todo, None]), _Inline(handle=handle), 0, reraise=True)
        elif workers > 1:
            context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked GL/JAX
            jobs, sink = context.Queue(), context.Queue()
            queues = [jobs, sink]
            for job in [*todo, *[None] * workers]:
                jobs.put(job)
            processes = [
                context.Process(target=_work, args=(settings, jobs, sink, w), daemon=True)
                for w in range(workers)
            ]
            for p in processes:
                p.start()
            for _ in todo:
                handle(*_next(sink, processes))
    finally:
        bar.close()
        for p in processes:
            if p.is_alive():
                p.terminate()
            p.join()
        for q in queues:  # release their semaphores now, not at interpreter exit
            q.close()
            q.join_thread()
    return state["results"]


def _next(sink, processes) -> tuple[str, Any]:
    """The next worker message; an error if every worker died without saying why."""
    if not processes:
        return sink.get()
    while True:
        try:
            return sink.get(timeout=5.0)
        except queue.Empty:
            if not any(p.is_alive() for p in processes):
                codes = [p.exitcode for p in processes]
                return "error", f"every worker exited (exit codes {codes}) with episodes left"
