"""CartPole-v1 (gymnasium 1.x ``classic_control/cartpole.py``), batched and pure.

State and observation ``[x, x_dot, theta, theta_dot]``; action 0 pushes left, 1 right (force
10); Euler integration with tau = 0.02; reward 1 every step (gymnasium's default, the step
that terminates included); terminated when ``|x| > 2.4`` or ``|theta| > 12 degrees``;
truncated after 500 steps. Reset: each component uniform in ``[-0.05, 0.05]``.

Gymnasium returns 0 reward for steps taken *after* termination (it warns: undefined
behaviour); a batched env resets instead, so that case never arises here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["CartPoleDynamics"]


class CartPoleDynamics:
    """Pure batched dynamics of CartPole-v1."""

    env_id = "CartPole-v1"
    state_dim = 4
    obs_dim = 4
    max_episode_steps = 500
    discrete = True
    n_actions = 2

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    obs_low = (-x_threshold * 2, -math.inf, -theta_threshold_radians * 2, -math.inf)
    obs_high = (x_threshold * 2, math.inf, theta_threshold_radians * 2, math.inf)

    def initial_state(self, u: Tensor) -> Tensor:
        """``u`` ``[*B, 4]`` uniforms in [0, 1) -> state uniform on ``[-0.05, 0.05]^4``."""
        return -0.05 + 0.1 * u

    def observe(self, state: Tensor) -> Tensor:
        """``[*B, 4]`` -> ``[*B, 4]`` (the observation is the state)."""
        return state.clone()

    def step(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``state`` ``[*B, 4]``, ``action`` int64 ``[*B]`` -> next state ``[*B, 4]``, reward
        ``[*B]``, terminated ``[*B]``."""
        x, x_dot, theta, theta_dot = state.unbind(-1)
        force = torch.where(action == 1, self.force_mag, -self.force_mag).to(state.dtype)
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        temp = (force + self.polemass_length * (theta_dot * theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * (costheta * costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        next_state = torch.stack([x, x_dot, theta, theta_dot], dim=-1)
        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        return next_state, torch.ones_like(x), terminated
