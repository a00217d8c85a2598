"""Setup, the one home for both drivers' beginnings: device, threads, components, initial state.

Impure only in building live objects (env, modules); nothing here trains. A single agent and a
population are set up by the same functions: a population is ``M`` single-agent states stacked
on a leading member dimension, so member ``i`` starts exactly where :func:`tdppo.train` with
its config would start.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.envs import TransformedEnv

from tdppo import nets
from tdppo import random as trand
from tdppo.config import Config
from tdppo.distributed import Shards, shard_moments
from tdppo.envs import DYNAMICS, make_env
from tdppo.optim import adam_init
from tdppo.rollout import FusedCollector, GenericCollector, make_collector
from tdppo.state import STREAMS, build_state, json_tensor

__all__ = [
    "HP_KEYS",
    "Components",
    "build_components",
    "default_run_dir",
    "hyperparameters",
    "init_population",
    "init_state",
    "resolve_device",
    "set_threads",
]

HP_KEYS = (
    "lr", "adam_eps", "clip_eps", "vf_coef", "ent_coef", "max_grad_norm", "gamma", "gae_lambda",
)  # fmt: skip
"""Config fields held as float64 tensors in ``state["hp"]`` (0-d, or ``[M]`` in a population,
where a sweep may vary some of them per member)."""


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; one-line
    ``ValueError`` when CUDA is asked for and absent."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {spec}: CUDA is not available on this machine (use cpu or auto)"
        )
    return dev


def set_threads(threads: int | None, device: torch.device) -> None:
    """``threads`` intra-op threads; ``None``: 1 on CPU (small networks), untouched on CUDA."""
    if threads is not None:
        torch.set_num_threads(threads)
    elif device.type == "cpu":
        torch.set_num_threads(1)


def default_run_dir(cfg: Config, members: int | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    who = f"pop{members}" if members is not None else f"s{cfg.seed}"
    return Path("runs") / f"{cfg.env}-{who}-{stamp}"


def build_components(cfg: Config, device: torch.device, shards: Shards | None = None):
    """``(env, actor, critic)``: the env pipeline and the networks, initialised from
    ``cfg.seed`` (torch's global generator is left as it was). With data-parallel ``shards``
    the env pipeline holds this process's envs only."""
    shards = shards or Shards()
    env = make_env(
        cfg.env,
        shards.local_envs(cfg.num_envs),
        device=device,
        backend=cfg.backend,
        normalize_obs=cfg.normalize_obs,
        normalize_reward=cfg.normalize_reward,
        gamma=cfg.gamma,
        seed=cfg.seed,
        obs_clip=cfg.obs_clip,
        reward_clip=cfg.reward_clip,
        env_offset=shards.env_offset(cfg.num_envs),
    )
    moments = shard_moments(shards)
    for t in getattr(env.transform, "transforms", [env.transform]):
        if hasattr(t, "moments"):
            t.moments = moments  # the eager reset path merges shard moments like the step
    obs_dim = env.observation_spec["observation"].shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        actor = nets.make_actor(
            obs_dim,
            env.action_spec,
            hidden=cfg.hidden,
            activation=cfg.activation,
            init_log_std=cfg.init_log_std,
            device=device,
        )
        critic = nets.make_critic(
            obs_dim, hidden=cfg.hidden, activation=cfg.activation, device=device
        )
    return env, actor, critic


def hyperparameters(cfgs: Config | Sequence[Config], device: torch.device) -> TensorDict:
    """``state["hp"]``: :data:`HP_KEYS` as float64 tensors (python floats exactly), 0-d for one
    config, ``[M]`` for a sequence of member configs."""
    if isinstance(cfgs, Config):
        vals = {k: torch.tensor(float(getattr(cfgs, k)), dtype=torch.float64) for k in HP_KEYS}
        return TensorDict(vals, batch_size=[], device=device)
    vals = {
        k: torch.tensor([float(getattr(c, k)) for c in cfgs], dtype=torch.float64) for k in HP_KEYS
    }
    return TensorDict(vals, batch_size=[len(cfgs)], device=device)


@dataclass
class Components:
    """The live objects a driver needs next to the state: the env pipeline, the networks'
    structure (:func:`tdppo.nets.structure`: their parameters are the state's) and the
    collector."""

    env: TransformedEnv
    actor: torch.nn.Module
    critic: torch.nn.Module
    collector: FusedCollector | GenericCollector


def _carry_keys(collector: FusedCollector | GenericCollector, env: TransformedEnv) -> list | None:
    if isinstance(collector, FusedCollector):
        keys = ["observation", "state", "step_count", "episode"]
        if any(kind == "sum" for _, kind, _ in collector.plan):
            keys.append("episode_reward")
        return keys
    return None


def init_state(
    cfg: Config, device: torch.device, *, members: bool = False, shards: Shards | None = None
) -> tuple[TensorDict, Components]:
    """The fresh single-agent TrainState of ``cfg`` and its live components.

    ``members=True`` builds the collector for a population (vmapped, fused envs only).
    ``shards`` (data parallel): the state holds this process's envs; everything else is the
    same on every process.
    """
    shards = shards or Shards()
    env, actor, critic = build_components(cfg, device, shards)
    actor_s, critic_s = nets.structure(actor), nets.structure(critic)  # what functions close over
    policy_key = trand.fold_in(trand.key(cfg.seed, device), STREAMS["policy"])
    shard = None
    if shards.count > 1:
        shard = (shards.env_offset(cfg.num_envs), cfg.num_envs, shard_moments(shards))
    try:
        collector = make_collector(
            env, actor_s, policy_key, cfg.compile, members=members, shard=shard
        )
    except NotImplementedError as e:
        what = "a population" if members else "--shards > 1"
        raise ValueError(f"{what} needs the fused torch pipeline (a built-in env): {e}") from None
    carry = env.reset()
    keys = _carry_keys(collector, env)
    carry = carry.select(*keys) if keys else carry.exclude("action", "sample_log_prob")
    params0 = TensorDict(
        {
            "policy": TensorDict.from_module(actor).data,
            "value": TensorDict.from_module(critic).data,
        },
        batch_size=[],
    )
    state = build_state(
        actor=actor,
        critic=critic,
        env=env,
        carry=carry,
        opt_state=adam_init(params0.clone()),
        hp=hyperparameters(cfg, device),
        seed=cfg.seed,
        config=cfg.to_dict(),
        device=device,
    )
    return state, Components(env, actor_s, critic_s, collector)


def init_population(
    cfgs: Sequence[Config], base: Config, population: dict, device: torch.device
) -> tuple[TensorDict, Components]:
    """``M`` fresh member states (each exactly :func:`init_state` of its config) stacked on a
    leading member dimension; ``meta`` holds the base config and ``population_json``."""
    if base.backend == "gym" or base.env not in DYNAMICS:
        raise ValueError(
            f"a population runs the built-in torch envs only (backend 'torch': "
            f"{', '.join(DYNAMICS)}); got env {base.env!r} with backend {base.backend!r}"
        )
    states, first = [], None
    for c in cfgs:
        s, comp = init_state(replace(c, compile=base.compile), device, members=True)
        states.append(s)
        first = first or comp
    stacked = torch.stack([s.exclude("meta").clone() for s in states], dim=0)
    state = TensorDict({k: stacked[k] for k in stacked.keys()}, batch_size=[])
    meta = states[0]["meta"].clone()
    meta["config_json"] = json_tensor(base.to_dict())
    meta["population_json"] = json_tensor(population)
    state["meta"] = meta
    return state, first
