"""Pendulum-v1 (gymnasium 1.x ``classic_control/pendulum.py``), batched and pure.

State ``[theta, theta_dot]`` (theta unwrapped, 0 = upright), observation ``[cos theta,
sin theta, theta_dot]``, torque action in ``[-2, 2]``, reward ``-(angle_normalize(theta)^2 +
0.1 theta_dot^2 + 0.001 u^2)``, never terminates, truncated after 200 steps. Reset: theta in
``[-pi, pi]``, theta_dot in ``[-1, 1]``, uniformly.

The arithmetic follows gymnasium's, in the dtype of the state: the float64 env is gymnasium's
step fed float64 actions (with float32 actions numpy rounds ``0.001 u^2`` and ``3 u`` to
float32, a 1e-9-sized difference).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["PendulumDynamics", "angle_normalize"]


def angle_normalize(x: Tensor) -> Tensor:
    """Angle wrapped to ``[-pi, pi)``, exactly as gymnasium's ``angle_normalize``."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class PendulumDynamics:
    """Pure batched dynamics of Pendulum-v1 (g = 10)."""

    env_id = "Pendulum-v1"
    state_dim = 2
    obs_dim = 3
    max_episode_steps = 200
    discrete = False
    action_dim = 1
    action_low = -2.0
    action_high = 2.0
    obs_low = (-1.0, -1.0, -8.0)
    obs_high = (1.0, 1.0, 8.0)

    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    g = 10.0
    m = 1.0
    length = 1.0

    def initial_state(self, u: Tensor) -> Tensor:
        """``u`` ``[*B, 2]`` uniforms in [0, 1) -> ``[*B, 2]`` state, uniform on
        ``[-pi, pi] x [-1, 1]``."""
        th = -math.pi + (2 * math.pi) * u[..., 0]
        thdot = -1.0 + 2.0 * u[..., 1]
        return torch.stack([th, thdot], dim=-1)

    def observe(self, state: Tensor) -> Tensor:
        """``[*B, 2]`` -> ``[*B, 3]``: ``[cos theta, sin theta, theta_dot]``."""
        th, thdot = state.unbind(-1)
        return torch.stack([torch.cos(th), torch.sin(th), thdot], dim=-1)

    def step(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``state`` ``[*B, 2]``, ``action`` ``[*B, 1]`` -> next state ``[*B, 2]``, reward
        ``[*B]``, terminated ``[*B]`` (always False)."""
        th, thdot = state.unbind(-1)
        u = action[..., 0].to(state.dtype).clamp(-self.max_torque, self.max_torque)
        th_n = angle_normalize(th)
        costs = th_n * th_n + 0.1 * (thdot * thdot) + 0.001 * (u * u)
        g, m, ln, dt = self.g, self.m, self.length, self.dt
        accel = 3 * g / (2 * ln) * torch.sin(th) + 3.0 / (m * ln**2) * u
        newthdot = (thdot + accel * dt).clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        next_state = torch.stack([newth, newthdot], dim=-1)
        return next_state, -costs, torch.zeros_like(th, dtype=torch.bool)
