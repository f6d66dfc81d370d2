"""The episode half of the policy interface, the same in both runtimes.

A policy holds its episode in two objects: the observation transform's frame history and the
frame-code cache. `EpisodeState` gives a policy class that has `self.transform`
(`transforms.ObservationTransform`) and `self.frame_cache` (`frame_cache.FrameCodeCache`) the
interface's `reset`, `observe`, `skip`, `save_episode` and `restore_episode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class EpisodeState:
    """Mixin: the episode methods of `inference.interface.Policy`."""

    def reset(self) -> None:
        """Starts a new episode: forgets the frame history and the cached frame codes."""
        self.transform.reset()
        self.frame_cache.clear()

    def observe(self, observation: Mapping[str, Any]) -> None:
        """Records a step's generation frame without inferring (steps executed open-loop from a
        chunk still enter the history, whose offsets count environment steps). The frame is
        encoded only if a later window uses it."""
        self.transform.observe(observation)

    def skip(self, steps: int) -> None:
        """Counts `steps` environment steps executed without an observation (a client running a
        whole chunk): the newest frame stands in for them in the history."""
        self.transform.history.hold(steps)

    def save_episode(self) -> tuple:
        """The episode state (history, cached codes), for `restore_episode`."""
        return self.transform.history.snapshot(), self.frame_cache.snapshot()

    def restore_episode(self, state: tuple) -> None:
        """Puts back a state from `save_episode`: a failed request leaves no trace."""
        history, codes = state
        self.transform.history.restore(history)
        self.frame_cache.restore(codes)
