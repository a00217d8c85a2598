"""Batched collection of ``T`` steps over ``num_envs`` environments, with autoreset.

Two collectors share one contract: ``collect(carry, tstate, policy_params, steps0) ->
(carry, tstate, batch)`` where ``carry`` is the environment's root TensorDict (the observation
the next step starts from, physical state, step counts, episode counters and returns),
``tstate`` is ``TensorDict.from_module(env.transform)`` (every transform's statistics), and
``batch`` is a TensorDict of batch size ``[num_envs, T]`` with TorchRL keys (``observation``,
``action``, ``sample_log_prob``, ``("next", "observation" | "reward" | "terminated" |
"truncated" | "done" | "episode_reward")``). Policy noise for vector step ``s`` is drawn from
``fold_in(policy_key, s)``, so both collectors draw the same actions.

- :class:`FusedCollector` (built-in torch envs and make_env's transform stack): the policy,
  the env dynamics, the transforms' pure functions and the in-batch partial reset are fused in
  one function, compiled by :func:`tdppo.jit.compiled`; no host sync per step. It is the same
  pipeline as the ``TransformedEnv`` (a test steps both and compares), without TorchRL's
  per-step Python (README, Performance, has the measured costs).
- :class:`tdppo.envs.gym_fast.GymFastCollector` (the gym backend): gymnasium's vector env
  stepped directly on numpy, converted once, with the normalizers and the policy in one
  compiled call per vector step.
- :class:`GenericCollector` (any other ``TransformedEnv``): TorchRL's ``step_and_maybe_reset``
  with the (optionally compiled) policy step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import TransformedEnv
from torchrl.envs.transforms import Compose, RewardSum

from tdppo import jit, nets
from tdppo import random as trand
from tdppo.envs.base import Dynamics, TorchEnv, autoreset_step
from tdppo.envs.gym_fast import GymFastCollector
from tdppo.transforms import (
    RunningObservationNorm,
    RunningRewardNorm,
    apply_plan,
)

# a fused transform plan: (index in Compose, kind "obs" | "reward" | "sum", eps, clip)
Plan = tuple[tuple[str, str, float, float | None], ...]
# a data-parallel slice: (env offset, total envs, the normalizers' batch-moments function)
Shard = tuple[int, int, Any]

__all__ = ["FusedCollector", "GenericCollector", "fused_step", "make_collector", "policy_step_fn"]


def _transforms(env: TransformedEnv) -> list:
    t = env.transform
    return list(t.transforms) if isinstance(t, Compose) else [t]


def policy_step_fn(actor: torch.nn.Module):
    """``(params, obs, key) -> (action, log_prob)``: a pure sampling step of ``actor``."""

    def step(params: TensorDict, obs: torch.Tensor, key: torch.Tensor):
        return _sample_action(actor, params, obs, key)

    return step


def _sample_action(actor: torch.nn.Module, params, obs: torch.Tensor, key: torch.Tensor, rows=None):
    dp = nets.dist_params_dict(actor, params, obs)
    action = nets.sample(dp, key, rows)
    return action, nets.log_prob(dp, action)


def fused_step(
    plan: Plan,
    dyn: Dynamics,
    actor: torch.nn.Module,
    carry: dict[str, torch.Tensor],
    tstate: dict[str, Any],
    params: Mapping,
    key: torch.Tensor,
    env_key: torch.Tensor,
    shard: Shard | None = None,
) -> tuple[dict, dict, dict]:
    """One vector step over ``E`` envs (one agent); pure, branch-free, over plain dicts.

    Args:
        plan: :attr:`FusedCollector.consts`: ``(index in Compose, kind, eps, clip)`` per transform.
        dyn: the env's dynamics. actor: structure only (params are passed).
        carry: ``observation`` ``[E, obs]``, ``state`` ``[E, S]``, ``step_count`` /
            ``episode`` int64 ``[E, 1]``, ``episode_reward`` ``[E, 1]`` (with ``RewardSum``).
        tstate: ``TensorDict.from_module(env.transform).to_dict()``.
        params: the actor's params (``from_module`` layout). key: this step's policy key.
        env_key: the env's ``rng_key`` (0-d int64): picks its reset draws.
        shard: when these ``E`` envs are a slice of a data-parallel batch:
            ``(env_offset, total_envs, moments)`` (:mod:`tdppo.distributed`).

    Returns:
        ``(carry, tstate, transition)``: the transition holds ``observation``, ``action``,
        ``sample_log_prob`` and ``next`` (``observation``, ``reward``, ``terminated``,
        ``truncated``, ``done``, ``episode_reward``), as the fused collector's batch does.
    """
    obs = carry["observation"]
    offset, total, moments = shard if shard is not None else (0, obs.shape[0], None)
    rows = (offset, total) if shard is not None else None
    action, logp = _sample_action(actor, params, obs, key, rows)
    out = autoreset_step(
        dyn,
        env_key,
        carry["state"],
        carry["step_count"].squeeze(-1),
        carry["episode"].squeeze(-1),
        action,
        env_offset=offset,
    )
    terminated, truncated = out.terminated.unsqueeze(-1), out.truncated.unsqueeze(-1)
    done = terminated | truncated
    reward = out.reward.unsqueeze(-1)
    tstate, ep_ret, next_obs, reset_obs, out_reward = apply_plan(
        plan, tstate, carry.get("episode_reward"), out.next_observation,
        out.observation, reward, terminated, done, moments,
    )  # fmt: skip
    carry_obs = torch.where(done, reset_obs, next_obs)
    new_carry = {
        "observation": carry_obs,
        "state": out.state,
        "step_count": out.step_count.unsqueeze(-1),
        "episode": out.episode.unsqueeze(-1),
    }
    nxt = {
        "observation": next_obs,
        "reward": out_reward,
        "terminated": terminated,
        "truncated": truncated,
        "done": done,
    }
    if ep_ret is not None:
        new_carry["episode_reward"] = torch.where(done, torch.zeros_like(ep_ret), ep_ret)
        nxt["episode_reward"] = ep_ret
    trans = {"observation": obs, "action": action, "sample_log_prob": logp, "next": nxt}
    return new_carry, tstate, trans


class FusedCollector:
    """One compiled function per vector step: policy -> dynamics -> transforms -> autoreset.

    Supports a ``TransformedEnv`` over a :class:`tdppo.envs.base.TorchEnv` whose transforms are
    drawn from ``RewardSum``, :class:`RunningObservationNorm` and :class:`RunningRewardNorm`
    (the stack :func:`tdppo.make_env` builds); anything else is ``NotImplementedError`` and the
    caller falls back to :class:`GenericCollector`.

    ``env_step(carry, tstate, params, key, env_key)`` is :func:`fused_step` over plain dicts;
    with ``members=True`` it is ``torch.vmap``-ped over a leading member dimension of every
    argument (a population), and with ``compile`` it is one compiled graph.
    """

    def __init__(
        self,
        env: TransformedEnv,
        actor: torch.nn.Module,
        policy_key: torch.Tensor,
        compile: bool,
        members: bool = False,
        shard: Shard | None = None,
    ):
        base = env.base_env
        if not isinstance(base, TorchEnv):
            raise NotImplementedError("fused collection needs a built-in torch env")
        self.dyn = base.dynamics
        self.policy_key = policy_key
        self.env_key = base.rng_key
        self.members = members
        # (index in Compose, kind, transform)
        self.plan = []
        for i, t in enumerate(_transforms(env)):
            if isinstance(t, RunningObservationNorm):
                self.plan.append((str(i), "obs", t))
            elif isinstance(t, RunningRewardNorm):
                self.plan.append((str(i), "reward", t))
            elif isinstance(t, RewardSum):
                self.plan.append((str(i), "sum", t))
            else:
                raise NotImplementedError(f"transform {type(t).__name__} is not fusable")
        # the plan as constants: (index in Compose, kind, eps, clip)
        consts = tuple(
            (i, kind, float(getattr(t, "eps", 0.0)), getattr(t, "clip", None))
            for i, kind, t in self.plan
        )
        self.consts, self.actor, dyn = consts, actor, self.dyn

        def member_env_step(carry, tstate, params, key, env_key):
            return fused_step(consts, dyn, actor, carry, tstate, params, key, env_key, shard)

        def population_env_step(carry, tstate, params, key, env_key):
            return torch.vmap(member_env_step)(carry, tstate, params, key, env_key)

        step = population_env_step if members else member_env_step
        self.env_step = jit.compiled(step) if compile else step

    def collect(
        self,
        carry: TensorDict,
        tstate: TensorDict,
        params: TensorDict,
        steps0: torch.Tensor,
        num_steps: int,
        policy_key: torch.Tensor | None = None,
        env_key: torch.Tensor | None = None,
    ) -> tuple[TensorDict, TensorDict, TensorDict]:
        """Run ``num_steps`` vector steps from vector step ``steps0`` (no host sync).

        Returns ``(carry, tstate, batch)``, ``batch`` of batch size ``[*M, num_envs, T]``.
        ``policy_key`` / ``env_key`` default to the ones the collector was built with.
        """
        policy_key = self.policy_key if policy_key is None else policy_key
        env_key = self.env_key if env_key is None else env_key
        t = torch.arange(num_steps, device=steps0.device)
        keys = trand.fold_in(policy_key.unsqueeze(-1), steps0.unsqueeze(-1) + t)  # [*M, T]
        c, ts, p = _plain(carry), _plain(tstate), _plain(params)
        # T env steps: carry and statistics fed forward, transitions stacked along time
        (c, ts, _), batch = jit.fold(
            self.env_step, (c, ts, p, None, env_key), (0, 1), 3, keys.unbind(-1), 2,
            dim=carry.batch_dims,
        )  # fmt: skip
        return (
            TensorDict(c, batch_size=carry.batch_size),
            TensorDict(ts, batch_size=tstate.batch_size),
            TensorDict(batch, batch_size=[*carry.batch_size, num_steps]),
        )


def _plain(tree) -> dict:
    """Plain nested dicts (compiled code traces them far faster than TensorDicts)."""
    return tree.to_dict() if isinstance(tree, TensorDictBase) else tree


class GenericCollector:
    """TorchRL's ``step_and_maybe_reset`` on any ``TransformedEnv``, with our policy step."""

    def __init__(
        self, env: TransformedEnv, actor: torch.nn.Module, policy_key: torch.Tensor, compile: bool
    ):
        self.env = env
        self.policy_key = policy_key
        self.policy = policy_step_fn(actor)
        if compile:
            self.policy = jit.compiled(self.policy)

    def collect(
        self,
        carry: TensorDict,
        tstate: TensorDict,
        params: TensorDict,
        steps0: torch.Tensor,
        num_steps: int,
        policy_key: torch.Tensor | None = None,
        env_key: torch.Tensor | None = None,
    ) -> tuple[TensorDict, TensorDict, TensorDict]:
        """As :meth:`FusedCollector.collect` (one agent); impure: it steps the live env, whose
        transforms update their buffers in place (``tstate`` is returned as those buffers)."""
        policy_key = self.policy_key if policy_key is None else policy_key
        keys = trand.fold_in(policy_key, steps0 + torch.arange(num_steps, device=steps0.device))
        td = carry
        out = []
        for t in range(num_steps):
            action, logp = self.policy(params, td["observation"], keys[t])
            td = td.clone(recurse=False)
            td["action"] = action
            td["sample_log_prob"] = logp
            tr, td = self.env.step_and_maybe_reset(td)
            out.append(tr.select("observation", "action", "sample_log_prob", "next"))
        batch = torch.stack(out, dim=1)
        return td, TensorDict.from_module(self.env.transform), batch


def make_collector(
    env: TransformedEnv,
    actor: torch.nn.Module,
    policy_key: torch.Tensor,
    compile: bool,
    fused: bool | None = None,
    members: bool = False,
    shard: Shard | None = None,
) -> FusedCollector | GenericCollector:
    """The fused collector when the pipeline allows it (``fused=None``), else the generic one
    (a population, ``members=True``, needs the fused one)."""
    if members or shard is not None:
        fused = True
    if fused is not False:
        try:
            return FusedCollector(env, actor, policy_key, compile, members=members, shard=shard)
        except NotImplementedError:
            if fused:
                raise
        try:  # gymnasium's vector env stepped directly, one compiled call per vector step
            return GymFastCollector(env, actor, policy_key, compile)
        except NotImplementedError:
            pass
    return GenericCollector(env, actor, policy_key, compile)
