"""The action expert's inputs and outputs (fp32) and the Euler flow-matching sampler.

Flow convention (pi0 / F1): t in (0, 1], t = 1 is noise; the network predicts the velocity
`noise - actions`; sampling integrates from t = 1 to 0 in `num_steps` Euler steps of
dt = -1 / num_steps, time advancing by repeated fp32 addition as in the original
(1.0, 0.9, 0.8000001, ...). Parameter names are the official ones below `model.`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from f1_common.model_config import ActionConfig


def time_embedding(t: np.ndarray, dim: int, min_period: float, max_period: float) -> np.ndarray:
    """`[sin(2 pi t / period), cos(2 pi t / period)]`, periods geometric in [min, max].

    Evaluated in float64 like the original (the angle reaches ~1.6e3 rad, where fp32 would lose
    ~1e-4), then rounded to fp32. The JAX model reaches the same values with an error-free fp32
    computation. The flow times are known on the host, so this never leaves the CPU.

    Args:
      t: [B] flow times.
    Returns:
      float32 [B, dim].
    """
    if dim % 2:
        raise ValueError(f"The time embedding width must be even, got {dim}.")
    fraction = np.linspace(0.0, 1.0, dim // 2, dtype=np.float64)
    period = min_period * (max_period / min_period) ** fraction
    angle = 2.0 * np.pi * np.asarray(t, np.float64)[:, None] / period
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=-1).astype(np.float32)


class ActionInputs(nn.Module):
    """State token + noisy action tokens fused with the flow time; the velocity read-out."""

    def __init__(self, c: ActionConfig):
        super().__init__()
        self.config = c
        self.state_proj = nn.Linear(c.state_dim, c.width)
        self.action_in_proj = nn.Linear(c.action_dim, c.width)
        self.action_time_mlp_in = nn.Linear(2 * c.width, c.width)
        self.action_time_mlp_out = nn.Linear(c.width, c.width)
        self.action_out_proj = nn.Linear(c.width, c.action_dim)

    def forward(self, state: torch.Tensor, x_t: torch.Tensor, t: np.ndarray) -> torch.Tensor:
        """Suffix tokens [B, 1 + chunk, W]: the state token, then one token per action step.

        Args:
          state: [B, state_dim] (zero-padded); x_t: [B, chunk, action_dim]; t: [B] host times.
        """
        c = self.config
        state_token = self.state_proj(state.float())[:, None]
        emb = time_embedding(t, c.width, c.min_period, c.max_period)
        time_tokens = torch.from_numpy(emb).to(x_t.device)[:, None].expand(-1, x_t.shape[1], -1)
        fused = self.action_time_mlp_in(
            torch.cat([self.action_in_proj(x_t.float()), time_tokens], -1)
        )
        fused = self.action_time_mlp_out(F.silu(fused))
        return torch.cat([state_token, fused], dim=1)

    def velocity(self, action_outputs: torch.Tensor) -> torch.Tensor:
        """Action-expert outputs [B, chunk, W] -> fp32 velocities [B, chunk, action_dim]."""
        return self.action_out_proj(action_outputs.float())


def euler_sample(
    velocity_fn: Callable[[torch.Tensor, np.ndarray], torch.Tensor],
    noise: torch.Tensor,
    num_steps: int,
) -> torch.Tensor:
    """Integrates dx/dt = v(x, t) from t = 1 (noise) to 0; `noise` [B, chunk, dim] is not
    modified. velocity_fn: (x_t [B, chunk, dim], t float32 [B]) -> v [B, chunk, dim]."""
    dt = np.float32(-1.0 / num_steps)
    x, t = noise.float().clone(), np.float32(1.0)
    for _ in range(num_steps):
        x = x + float(dt) * velocity_fn(x, np.full((x.shape[0],), t, np.float32)).float()
        t = np.float32(t + dt)
    return x
