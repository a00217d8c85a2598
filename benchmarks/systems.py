"""The rows a benchmark can run: name -> baseline module and its extra arguments.

Modules are imported on first use (TorchRL, SB3 and tdppo each take seconds to import), and a
missing one becomes :class:`~benchmarks.common.Unavailable`, reported in its row.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Unavailable

REFERENCE = "CleanRL-style"
"""Ratios are reported against this row (and against ``SB3``, :data:`SB3`)."""
SB3 = "SB3"


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
            "gym backend: make_env's gymnasium SyncVectorEnv (autoreset off) stepped directly on "
            "numpy by tdppo's GymFastCollector, then one torch.compile'd call per vector step "
            "(float32 cast, episode return, running obs/reward normalizers, next action)",
        ),
        System(
            "tdppo",
            "tdppo_ppo",
            {"backend": "auto", "compile": True},
            "built-in torch env when there is one, else the gym backend (GymFastCollector); "
            "torch.compile",
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
THROUGHPUT_BY_ENV: dict[str, list[str]] = {
    "HalfCheetah-v5": ["SB3", "CleanRL-style", "tdppo gym compiled"],
}
"""Training-throughput rows for envs without a built-in torch env (the torch rows cannot run
there; TorchRL-style is left out to save minutes: it is 0.2-0.35x CleanRL-style on Pendulum)."""
LEARNING = ["tdppo", "SB3", "CleanRL-style"]
LEARNING_BY_ENV: dict[str, list[str]] = {
    "Pendulum-v1": ["tdppo", "tdppo gym compiled", "SB3", "CleanRL-style"],
    "HalfCheetah-v5": ["tdppo gym compiled", "SB3", "CleanRL-style"],
}
"""Learning rows where they differ from :data:`LEARNING`: Pendulum also through the gym backend
("tdppo" picks the built-in torch env there); HalfCheetah has no torch env, so "tdppo" would be
the gym backend too and is named for what it runs."""


def throughput_rows(env_id: str) -> list[str]:
    return THROUGHPUT_BY_ENV.get(env_id, THROUGHPUT)


def learning_rows(env_id: str) -> list[str]:
    return LEARNING_BY_ENV.get(env_id, LEARNING)


def module(system: System):
    """Import ``benchmarks.baselines.<module>``; :class:`Unavailable` if it cannot be."""
    try:
        return importlib.import_module(f"benchmarks.baselines.{system.module}")
    except ImportError as e:
        raise Unavailable(f"{system.name}: cannot import ({type(e).__name__}: {e})") from e


def _extras(system: System, eager: bool) -> dict[str, Any]:
    extras = dict(system.kwargs)
    if eager and "compile" in extras:
        extras["compile"] = False
    return extras


def runner(name: str, eager: bool = False, **fixed: Any) -> Callable[..., dict]:
    """``f(**kw) -> dict`` calling ``run`` of system ``name`` with ``fixed``, its extras, ``kw``.

    ``eager=True`` runs a compiled row without ``torch.compile`` (``--smoke``: compilation
    takes minutes on this CPU)."""
    system = SYSTEMS[name]

    def call(**kw: Any) -> dict:
        return module(system).run(**{**fixed, **_extras(system, eager), **kw})

    return call


def ceiling(name: str, which: str, eager: bool = False, **kw: Any) -> dict:
    """``env_only`` or ``update_only`` of system ``name``; :class:`Unavailable` if it has none."""
    system = SYSTEMS[name]
    fn = getattr(module(system), which, None)
    if fn is None:
        hint = " (see the update_speed benchmark)" if which == "update_only" else ""
        raise Unavailable(f"{name}: no {which} measurement through its public API{hint}")
    accepted = inspect.signature(fn).parameters
    extra = {k: v for k, v in _extras(system, eager).items() if k in accepted}
    return fn(**kw, **extra)
