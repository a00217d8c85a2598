"""``DYNAMICS``: each built-in gymnasium id and its pure, batched dynamics object."""

from __future__ import annotations

from tdppo.envs.acrobot import AcrobotDynamics
from tdppo.envs.base import Dynamics
from tdppo.envs.cartpole import CartPoleDynamics
from tdppo.envs.mountain_car import MountainCarContinuousDynamics
from tdppo.envs.pendulum import PendulumDynamics

__all__ = ["DYNAMICS"]

DYNAMICS: dict[str, Dynamics] = {
    d.env_id: d
    for d in (
        PendulumDynamics(),
        CartPoleDynamics(),
        AcrobotDynamics(),
        MountainCarContinuousDynamics(),
    )
}
