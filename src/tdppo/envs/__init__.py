"""Batched torch environments that match gymnasium step for step, and :func:`make_env`.

``DYNAMICS`` maps each built-in gymnasium id to its pure dynamics object; :class:`TorchEnv`
wraps one as a TorchRL env; :func:`make_env` builds the transformed env tdppo trains on (the
torch env for built-in ids, TorchRL's ``GymEnv`` for any other gymnasium id).
"""

from __future__ import annotations

from tdppo.envs.acrobot import AcrobotDynamics
from tdppo.envs.base import (
    AutoresetStep,
    Dynamics,
    TorchEnv,
    autoreset_step,
    reset_uniforms,
    round_to_float32,
)
from tdppo.envs.cartpole import CartPoleDynamics
from tdppo.envs.make import make_env
from tdppo.envs.mountain_car import MountainCarContinuousDynamics
from tdppo.envs.pendulum import PendulumDynamics
from tdppo.envs.registry import DYNAMICS

__all__ = [
    "DYNAMICS",
    "AcrobotDynamics",
    "AutoresetStep",
    "CartPoleDynamics",
    "Dynamics",
    "MountainCarContinuousDynamics",
    "PendulumDynamics",
    "TorchEnv",
    "autoreset_step",
    "make_env",
    "reset_uniforms",
    "round_to_float32",
]
