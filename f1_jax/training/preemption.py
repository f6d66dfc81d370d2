"""Stopping cleanly on SIGTERM (TPU preemption, `kill`, SLURM's time limit) at a step every
process agrees on.

With several processes, JAX's distributed runtime owns SIGTERM: its preemption notifier tells the
coordination service, and `reached_preemption_sync_point(step)` turns true at the same step on
every process, so all of them save that step and stop (a per-host flag could make hosts disagree
and block the collective save). A single process has nobody to agree with: a Python handler
sets a flag that the loop reads after every step.
"""

import logging
import signal

import jax
from jax.experimental import multihost_utils

log = logging.getLogger("f1_jax")


class Preemption:
    """`reached(step)` is true at the step after which the run must save and stop."""

    def __init__(self):
        self.distributed = jax.process_count() > 1
        self._requested = False
        self._previous = None
        if not self.distributed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and exiting.")
        self._requested = True

    def reached(self, step: int) -> bool:
        if self.distributed:
            # A collective over every process: call it at every step, on every process.
            if multihost_utils.reached_preemption_sync_point(step):
                log.warning("Preemption at step %d: every process saves it and exits.", step)
                return True
            return False
        return self._requested

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
