"""A faster collector for the gym backend: gymnasium's vector env stepped directly on numpy.

:class:`GymFastCollector` has the contract of ``tdppo.rollout.GenericCollector.collect``
(``collect(carry, tstate, params, steps0, num_steps) -> (carry, tstate, batch)``) and returns
the same tensors, bit for bit, on the same seeds (a test compares them), without TorchRL's
per-call ``EnvBase.step`` machinery. Per vector step it makes

1. one ``SyncVectorEnv.step`` of the make_env env's own vector env (so seeding and
   ``capture_state``/``restore_state`` apply unchanged), plus one ``reset`` with gymnasium's
   ``reset_mask`` when an episode ended (the env runs with ``AutoresetMode.DISABLED``; this is
   what TorchRL's ``step_and_maybe_reset`` does);
2. one conversion of the numpy results to tensors;
3. one call of a pure function (compiled with ``compile=True``) holding the transform stack
   (float64 -> float32 cast, ``RewardSum``, the running observation and reward normalizers,
   with the same pure steps the transforms call) and the policy's sampling of the next
   action.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import TransformedEnv
from torchrl.envs.transforms import Compose, DoubleToFloat, RewardSum

from tdppo import jit, nets
from tdppo import random as trand
from tdppo.transforms import (
    RunningObservationNorm,
    RunningRewardNorm,
    apply_plan,
)

__all__ = ["GymFastCollector", "post_step", "action_clipper"]

# (index in Compose, kind "cast" | "sum" | "obs" | "reward", eps, clip)
Plan = tuple[tuple[str, str, float, float | None], ...]


def action_clipper(space: Any) -> Callable[[np.ndarray], np.ndarray]:
    """What the gym backend does to an action before the env sees it: a Box with finite bounds
    clips to them (as CleanRL's ``ClipAction`` wrapper and SB3 do: MuJoCo charges its control
    cost on the action it is handed); any other space passes it through. The batch keeps the
    sampled, unclipped action, whose log-probability PPO's ratio needs. ``space`` is one
    sub-env's action space (``SyncVectorEnv.single_action_space``)."""
    import gymnasium

    if isinstance(space, gymnasium.spaces.Box) and np.issubdtype(space.dtype, np.floating):
        low, high = space.low, space.high
        if np.all(np.isfinite(low)) and np.all(np.isfinite(high)):
            return lambda a: np.clip(a, low, high)
    return lambda a: a


def post_step(
    plan: Plan,
    tstate: dict[str, Any],
    ep_ret: torch.Tensor | None,
    next_obs: torch.Tensor,
    reset_obs: torch.Tensor,
    reward: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
) -> tuple[dict, dict, dict]:
    """The transform stack on one vector step's raw results; pure and branch-free.

    Args:
        plan: :attr:`GymFastCollector.plan`. tstate: ``from_module(env.transform)`` as dicts.
        ep_ret: the carry's ``episode_reward`` ``[B, 1]`` (``None`` without ``RewardSum``).
        next_obs: the step's observation ``[B, obs]``; reset_obs: the observation each env
            starts its next step from (the reset's for done envs, else ``next_obs``).
        reward: ``[B, 1]``; terminated, truncated: bool ``[B, 1]``.

    Returns:
        ``(carry, tstate, next)``: the carry (``observation``, ``episode_reward``, flags) and
        the transition's ``next`` entries, as ``step_and_maybe_reset`` leaves them.
    """
    done = terminated | truncated
    tstate, ep_ret, next_obs, reset_obs, out_reward = apply_plan(
        plan, tstate, ep_ret, next_obs, reset_obs, reward, terminated, done
    )
    no = torch.zeros_like(done)
    carry = {
        "observation": torch.where(done, reset_obs, next_obs),
        "done": no,
        "terminated": no,
        "truncated": no,
    }
    nxt = {
        "observation": next_obs,
        "reward": out_reward,
        "terminated": terminated,
        "truncated": truncated,
        "done": done,
    }
    if ep_ret is not None:
        carry["episode_reward"] = torch.where(done, torch.zeros_like(ep_ret), ep_ret)
        nxt["episode_reward"] = ep_ret
    return carry, tstate, nxt


def _policy(actor: torch.nn.Module, params, obs: torch.Tensor, key: torch.Tensor):
    dp = nets.dist_params_dict(actor, params, obs)
    action = nets.sample(dp, key)
    return action, nets.log_prob(dp, action)


def _step(plan: Plan, reward_dtype: torch.dtype, actor: torch.nn.Module, tstate, ep_ret,
          obs2: torch.Tensor, flags: torch.Tensor, params, key: torch.Tensor):  # fmt: skip
    """The transforms on step ``t``'s raw results, then the action of step ``t + 1`` (pure).

    ``obs2`` ``[2, B, obs]``: the step's and the reset's observations; ``flags`` float64
    ``[B, 3]``: reward, terminated, truncated (one conversion from numpy for each)."""
    reward = flags[:, 0:1].to(reward_dtype)
    terminated, truncated = flags[:, 1:2] != 0, flags[:, 2:3] != 0
    carry, tstate, nxt = post_step(
        plan, tstate, ep_ret, obs2[0], obs2[1], reward, terminated, truncated
    )
    action, logp = _policy(actor, params, carry["observation"], key)
    return carry, tstate, nxt, action, logp


class GymFastCollector:
    """Collection on make_env's gym-backend pipeline without TorchRL's per-step calls.

    Supports a ``TransformedEnv`` over make_env's gymnasium ``SyncVectorEnv`` (autoreset
    disabled) whose transforms are drawn from ``DoubleToFloat``, ``RewardSum``,
    :class:`RunningObservationNorm` and :class:`RunningRewardNorm`; anything else is
    ``NotImplementedError`` (use ``GenericCollector``).
    """

    def __init__(
        self, env: TransformedEnv, actor: torch.nn.Module, policy_key: torch.Tensor, compile: bool
    ):
        import gymnasium

        base = env.base_env
        vec = getattr(base, "_env", None)
        if not isinstance(vec, gymnasium.vector.SyncVectorEnv) or (
            vec.autoreset_mode != gymnasium.vector.AutoresetMode.DISABLED
        ):
            raise NotImplementedError("needs make_env's gym backend (SyncVectorEnv, DISABLED)")
        ts = env.transform
        plan = []
        for i, t in enumerate(list(ts.transforms) if isinstance(ts, Compose) else [ts]):
            if isinstance(t, DoubleToFloat):
                kind = "cast"
            elif isinstance(t, RewardSum):
                kind = "sum"
            elif isinstance(t, RunningObservationNorm):
                kind = "obs"
            elif isinstance(t, RunningRewardNorm):
                kind = "reward"
            else:
                raise NotImplementedError(f"transform {type(t).__name__} is not supported")
            plan.append((str(i), kind, float(getattr(t, "eps", 0.0)), getattr(t, "clip", None)))
        self.plan: Plan = tuple(plan)
        self.vec = vec
        self.clip_action = action_clipper(vec.single_action_space)
        self.device = env.device if env.device is not None else torch.device("cpu")
        self.reward_dtype = base.reward_spec.dtype
        self.policy_key = policy_key
        # the pure parts close over structure and constants only (not over this object, which
        # holds the simulators): tdppo.jit finds their packages without tracing when warm
        plan, reward_dtype = self.plan, self.reward_dtype

        def policy(params, obs, key):
            return _policy(actor, params, obs, key)

        def step(tstate, ep_ret, obs2, flags, params, key):
            return _step(plan, reward_dtype, actor, tstate, ep_ret, obs2, flags, params, key)

        self._policy, self._step = (jit.compiled(policy), jit.compiled(step)) if compile else (
            policy, step)  # fmt: skip

    # -- impure driver ---------------------------------------------------------------------------
    def _env_step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One vector step on numpy, then a reset of the done envs (``reset_mask``); the raw
        results as two tensors (see :func:`_step`)."""
        obs, reward, terminated, truncated, _ = self.vec.step(
            self.clip_action(action.detach().cpu().numpy())
        )
        done = terminated | truncated
        if done.any():
            reset_obs, _ = self.vec.reset(options={"reset_mask": done})
            obs2 = np.stack((obs, reset_obs))
        else:
            obs2 = np.stack((obs, obs))
        flags = np.stack((reward, terminated, truncated), axis=-1).astype(np.float64)
        return torch.from_numpy(obs2).to(self.device), torch.from_numpy(flags).to(self.device)

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
        """Run ``num_steps`` vector steps; returns ``(carry, tstate, batch[num_envs, T])``.

        Impure: it steps the live vector env. Unlike ``GenericCollector`` the transforms'
        buffers are not touched: the returned ``tstate`` is new and the caller writes it back
        (the driver does). ``env_key`` is accepted for the common signature and unused (the
        gymnasium envs draw from their own ``np_random``)."""
        policy_key = self.policy_key if policy_key is None else policy_key
        keys = trand.fold_in(policy_key, steps0 + torch.arange(num_steps + 1, device=steps0.device))
        p = params.to_dict() if isinstance(params, TensorDictBase) else params
        ts = tstate.to_dict()
        obs = carry["observation"]
        ep_ret = carry.get("episode_reward", None)
        action, logp = self._policy(p, obs, keys[0])
        rows = []
        c = None
        for t in range(num_steps):
            obs2, flags = self._env_step(action)
            c, ts, nxt, next_action, next_logp = self._step(ts, ep_ret, obs2, flags, p, keys[t + 1])
            rows.append(
                {"observation": obs, "action": action, "sample_log_prob": logp, "next": nxt}
            )
            obs, ep_ret = c["observation"], c.get("episode_reward")
            action, logp = next_action, next_logp
        new_carry = carry.clone(recurse=False)
        if c is not None:
            for k, v in c.items():
                if k in new_carry.keys():
                    new_carry[k] = v
        batch = TensorDict(
            {
                k: (
                    torch.stack([r[k] for r in rows], dim=1)
                    if k != "next"
                    else {n: torch.stack([r["next"][n] for r in rows], 1) for n in rows[0]["next"]}
                )
                for k in rows[0]
            },
            batch_size=[*carry.batch_size, num_steps],
        )
        return new_carry, TensorDict(ts, batch_size=[]), batch
