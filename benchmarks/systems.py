"""The rows a benchmark can run: name -> baseline module and its extra arguments.

Modules are imported on first use (TorchRL, SB3 and tdppo each take seconds to import), and a
missing one becomes :class:`~benchmarks.common.Unavailable`, reported in its row.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Unavailable

REFERENCE = "CleanRL-style"
"""Ratios are reported against this row."""


@dataclass(frozen=True)
class System:
    name: str
    module: str
    """Module under ``benchmarks.baselines`` exposing ``run`` (and optionally ``env_only`` /
    ``update_only``)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of its ``run`` (backend, compile)."""
    note: str = ""


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in [
        System("SB3", "sb3_ppo", note="VecNormalize(DummyVecEnv), MlpPolicy"),
        System(
            "CleanRL-style",
            "cleanrl_ppo",
            note="SyncVectorEnv + gymnasium vector NormalizeObservation/NormalizeReward",
        ),
        System(
            "TorchRL-style",
            "torchrl_ppo",
            note="Collector(SerialEnv(GymEnv)), VecNormV2 on observations only, ClipPPOLoss",
        ),
        System(
            "tdppo torch compiled",
            "tdppo_ppo",
            {"backend": "torch", "compile": True},
            "built-in torch envs, torch.compile",
        ),
        System(
            "tdppo torch eager",
            "tdppo_ppo",
            {"backend": "torch", "compile": False},
            "built-in torch envs, eager",
        ),
        System(
            "tdppo gym compiled",
            "tdppo_ppo",
            {"backend": "gym", "compile": True},
            "TorchRL GymEnv over gymnasium, torch.compile",
        ),
        System(
            "tdppo",
            "tdppo_ppo",
            {"backend": "auto", "compile": True},
            "built-in torch env when there is one, else GymEnv; torch.compile",
        ),
    ]
}

THROUGHPUT = [
    "SB3",
    "CleanRL-style",
    "TorchRL-style",
    "tdppo torch compiled",
    "tdppo torch eager",
    "tdppo gym compiled",
]
LEARNING = ["tdppo", "SB3", "CleanRL-style"]


def module(system: System):
    """Import ``benchmarks.baselines.<module>``; :class:`Unavailable` if it cannot be."""
    try:
        return importlib.import_module(f"benchmarks.baselines.{system.module}")
    except ImportError as e:
        raise Unavailable(f"{system.name}: cannot import ({type(e).__name__}: {e})") from e


def runner(name: str, **fixed: Any) -> Callable[..., dict]:
    """``f(**kw) -> dict`` calling ``run`` of system ``name`` with ``fixed``, its extras, ``kw``."""
    system = SYSTEMS[name]

    def call(**kw: Any) -> dict:
        return module(system).run(**{**fixed, **system.kwargs, **kw})

    return call


def ceiling(name: str, which: str, **kw: Any) -> dict:
    """``env_only`` or ``update_only`` of system ``name``; :class:`Unavailable` if it has none."""
    system = SYSTEMS[name]
    fn = getattr(module(system), which, None)
    if fn is None:
        hint = " (see the update_speed benchmark)" if which == "update_only" else ""
        raise Unavailable(f"{name}: no {which} measurement through its public API{hint}")
    extra = {"backend": system.kwargs["backend"]} if "backend" in system.kwargs else {}
    return fn(**kw, **extra)
