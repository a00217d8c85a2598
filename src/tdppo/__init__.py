"""tdppo: PPO on TorchRL and tensordict, where everything training mutates lives in one TensorDict.

Public entry points (imported lazily so ``import tdppo`` stays cheap):

- :class:`tdppo.Config`, :func:`tdppo.train`
- :func:`tdppo.make_env`
- :func:`tdppo.load_checkpoint`, :func:`tdppo.load_policy`
- :mod:`tdppo.transforms` (``RunningObservationNorm``, ``RunningRewardNorm``)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "tdppo.config",
    "train": "tdppo.trainer",
    "make_env": "tdppo.envs",
    "load_checkpoint": "tdppo.checkpoint",
    "load_policy": "tdppo.policy",
    "evaluate": "tdppo.evaluation",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'tdppo' has no attribute {name!r}")
