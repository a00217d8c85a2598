"""Acrobot-v1 (gymnasium 1.x ``classic_control/acrobot.py``), batched and pure.

State ``[theta1, theta2, dtheta1, dtheta2]``, observation ``[cos theta1, sin theta1, cos
theta2, sin theta2, dtheta1, dtheta2]``; actions 0, 1, 2 apply torque -1, 0, +1 to the joint;
one RK4 step of dt = 0.2 with the "book" dynamics and no torque noise (gymnasium's defaults);
angles wrapped to ``[-pi, pi]``, velocities clipped to ``4 pi`` and ``9 pi``; reward -1 per
step and 0 on the step that terminates (``-cos theta1 - cos(theta1 + theta2) > 1``);
truncated after 500 steps. Reset: each component uniform in ``[-0.1, 0.1]``, rounded to
float32 as gymnasium does.

The arithmetic follows gymnasium's operation for operation (same constants, same order), so
float64 trajectories agree to rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tdppo.envs.base import round_to_float32

__all__ = ["AcrobotDynamics", "wrap"]

_PI = math.pi


def wrap(x: Tensor, m: float, big_m: float) -> Tensor:
    """``x`` wrapped into ``[m, M]`` by whole turns of ``M - m`` (gymnasium's ``wrap``,
    branch-free; one turn is the exact ``x - diff`` gymnasium computes)."""
    diff = big_m - m
    x = x - torch.ceil((x - big_m) / diff).clamp(min=0) * diff
    return x + torch.ceil((m - x) / diff).clamp(min=0) * diff


class AcrobotDynamics:
    """Pure batched dynamics of Acrobot-v1 ("book" equations, no torque noise)."""

    env_id = "Acrobot-v1"
    state_dim = 4
    obs_dim = 6
    max_episode_steps = 500
    discrete = True
    n_actions = 3

    dt = 0.2
    LINK_LENGTH_1 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * _PI
    MAX_VEL_2 = 9 * _PI
    AVAIL_TORQUE = (-1.0, 0.0, 1.0)

    obs_low = (-1.0, -1.0, -1.0, -1.0, -MAX_VEL_1, -MAX_VEL_2)
    obs_high = (1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2)

    def initial_state(self, u: Tensor) -> Tensor:
        """``u`` ``[*B, 4]`` -> state uniform on ``[-0.1, 0.1]^4``, rounded to float32."""
        return round_to_float32(-0.1 + 0.2 * u)

    def observe(self, state: Tensor) -> Tensor:
        """``[*B, 4]`` -> ``[*B, 6]``."""
        t1, t2, d1, d2 = state.unbind(-1)
        return torch.stack(
            [torch.cos(t1), torch.sin(t1), torch.cos(t2), torch.sin(t2), d1, d2], dim=-1
        )

    def _dsdt(self, t1: Tensor, t2: Tensor, dt1: Tensor, dt2: Tensor, a: Tensor):
        """Time derivative of the state (gymnasium's ``_dsdt``, book version)."""
        m1, m2 = self.LINK_MASS_1, self.LINK_MASS_2
        l1 = self.LINK_LENGTH_1
        lc1, lc2 = self.LINK_COM_POS_1, self.LINK_COM_POS_2
        i1 = i2 = self.LINK_MOI
        g = 9.8
        cos_t2, sin_t2 = torch.cos(t2), torch.sin(t2)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos_t2) + i1 + i2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos_t2) + i2
        phi2 = m2 * lc2 * g * torch.cos(t1 + t2 - _PI / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * (dt2 * dt2) * sin_t2
            - 2 * m2 * l1 * lc2 * dt2 * dt1 * sin_t2
            + (m1 * lc1 + m2 * l1) * g * torch.cos(t1 - _PI / 2)
            + phi2
        )
        ddt2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * (dt1 * dt1) * sin_t2 - phi2) / (
            m2 * lc2**2 + i2 - (d2 * d2) / d1
        )
        ddt1 = -(d2 * ddt2 + phi1) / d1
        return dt1, dt2, ddt1, ddt2

    def step(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``state`` ``[*B, 4]``, ``action`` int64 ``[*B]`` -> next state ``[*B, 4]``, reward
        ``[*B]``, terminated ``[*B]``."""
        a = (action.to(state.dtype) - 1.0).clamp(-1.0, 1.0)  # AVAIL_TORQUE[action]
        y0 = state.unbind(-1)
        dt = self.dt
        dt2 = dt / 2.0
        k1 = self._dsdt(*y0, a)
        k2 = self._dsdt(*(y + dt2 * k for y, k in zip(y0, k1)), a)
        k3 = self._dsdt(*(y + dt2 * k for y, k in zip(y0, k2)), a)
        k4 = self._dsdt(*(y + dt * k for y, k in zip(y0, k3)), a)
        t1, t2, d1, d2 = (
            y + dt / 6.0 * (q1 + 2 * q2 + 2 * q3 + q4)
            for y, q1, q2, q3, q4 in zip(y0, k1, k2, k3, k4)
        )
        t1 = wrap(t1, -_PI, _PI)
        t2 = wrap(t2, -_PI, _PI)
        d1 = d1.clamp(-self.MAX_VEL_1, self.MAX_VEL_1)
        d2 = d2.clamp(-self.MAX_VEL_2, self.MAX_VEL_2)
        terminated = -torch.cos(t1) - torch.cos(t2 + t1) > 1.0
        reward = torch.where(terminated, 0.0, -1.0).to(state.dtype)
        return torch.stack([t1, t2, d1, d2], dim=-1), reward, terminated
