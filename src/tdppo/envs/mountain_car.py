"""MountainCarContinuous-v0 (gymnasium 1.x ``classic_control/continuous_mountain_car.py``).

State and observation ``[position, velocity]``; force action in ``[-1, 1]``; ``velocity +=
0.0015 force - 0.0025 cos(3 position)`` clipped to ``+-0.07``, ``position += velocity``
clipped to ``[-1.2, 0.6]`` (velocity zeroed when stuck at the left wall); terminated when
``position >= 0.45`` and ``velocity >= 0``; reward ``100 * terminated - 0.1 action^2`` (the
raw, unclipped action); truncated after 999 steps. Reset: position uniform in
``[-0.6, -0.4]``, velocity 0.

Gymnasium keeps this env's state in float32: ``self.state`` is a float32 array after every
step. Both dtypes here round the state to float32 at the end of each step as gymnasium does,
and in between follow gymnasium's arithmetic in the dtype of the env (the float64 env is
gymnasium's step fed float64 actions; ``3 * position`` is float32 there since the position
is). The initial position is rounded to float32 too: gymnasium keeps the reset state in
float64 for the first step only; the two differ by < 3e-8.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tdppo.envs.base import round_to_float32

__all__ = ["MountainCarContinuousDynamics"]


def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


class MountainCarContinuousDynamics:
    """Pure batched dynamics of MountainCarContinuous-v0 (goal_velocity = 0)."""

    env_id = "MountainCarContinuous-v0"
    state_dim = 2
    obs_dim = 2
    max_episode_steps = 999
    discrete = False
    action_dim = 1
    action_low = -1.0
    action_high = 1.0

    min_action = -1.0
    max_action = 1.0
    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.45
    goal_velocity = 0.0
    power = 0.0015

    obs_low = (_f32(min_position), _f32(-max_speed))
    obs_high = (_f32(max_position), _f32(max_speed))

    def initial_state(self, u: Tensor) -> Tensor:
        """``u`` ``[*B, 2]`` -> ``[*B, 2]``: position uniform on ``[-0.6, -0.4]`` (float32
        precision), velocity 0 (``u[..., 1]`` is unused)."""
        position = round_to_float32(-0.6 + 0.2 * u[..., 0])
        return torch.stack([position, torch.zeros_like(position)], dim=-1)

    def observe(self, state: Tensor) -> Tensor:
        """``[*B, 2]`` -> ``[*B, 2]`` (the observation is the state)."""
        return state.clone()

    def step(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``state`` ``[*B, 2]``, ``action`` ``[*B, 1]`` -> next state ``[*B, 2]``, reward
        ``[*B]``, terminated ``[*B]``."""
        f32 = round_to_float32
        position, velocity = state.unbind(-1)
        a = action[..., 0].to(state.dtype)
        force = a.clamp(self.min_action, self.max_action)
        hill = 0.0025 * torch.cos(f32(3 * position))
        dv = force * self.power - hill
        # numpy's weak Python scalars: a clipped force (a Python float) keeps the float32
        # velocity in float32; a clipped velocity (a Python float) keeps the position so.
        vel_f32 = force != a
        velocity = torch.where(vel_f32, f32(velocity + f32(dv)), velocity + dv)
        clipped = velocity.abs() > self.max_speed
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        pos_f32 = vel_f32 | clipped
        position = torch.where(pos_f32, f32(position + f32(velocity)), position + velocity)
        position = position.clamp(self.min_position, self.max_position)
        stuck = (position == self.min_position) & (velocity < 0)
        velocity = torch.where(stuck, torch.zeros_like(velocity), velocity)
        goal = torch.where(pos_f32, _f32(self.goal_position), self.goal_position)
        terminated = (position >= goal) & (velocity >= self.goal_velocity)
        reward = torch.where(terminated, 100.0, 0.0).to(state.dtype) - (a * a) * 0.1
        next_state = f32(torch.stack([position, velocity], dim=-1))
        return next_state, reward, terminated
