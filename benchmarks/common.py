"""Helpers shared by the benchmarks: timing, machine description, JSON output."""

import json
import os
import platform
import time
from typing import Any, Callable

import jax


def machine() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"
    return getattr(device, "device_kind", device.platform)


def emit(**fields: Any) -> None:
    """One JSON line per measurement."""
    print(json.dumps({"machine": machine(), **fields}), flush=True)


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(median, min) wall seconds of fn() after `warmup` calls, blocking on the results."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], times[0]
