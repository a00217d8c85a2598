"""The contract every built-in env follows, and the TorchRL env generic over it.

A *dynamics* object is a stateless bundle of constants and pure functions (``initial_state``,
``observe``, ``step``), batched over any leading dims and branch-free, so the same code runs
eagerly, under ``torch.compile`` and under ``torch.vmap``. Everything that changes lives in
tensors the caller holds: the physical state, the step and episode counters, and the env key.

Resets draw from :mod:`tdppo.random`: env ``i`` starting its episode ``k`` (0-based) gets
``uniform(fold_in(fold_in(env_key, i), k), (state_dim,))`` mapped by ``initial_state``. A reset
is therefore a pure function of ``(env_key, i, k)``; saving ``rng_key`` and the ``episode``
counters is all exact resume needs.

>>> import torch
>>> from tdppo.envs import DYNAMICS
>>> from tdppo.envs.base import autoreset_step, reset_uniforms
>>> from tdppo import random as tr
>>> dyn, key, n = DYNAMICS["Pendulum-v1"], tr.key(0), 4
>>> episode = torch.zeros(n, dtype=torch.int64)
>>> state = dyn.initial_state(reset_uniforms(key, torch.arange(n), episode, dyn.state_dim))
>>> out = autoreset_step(dyn, key, state, torch.zeros(n, dtype=torch.int64), episode,
...                      torch.zeros(n, 1))
>>> out.observation.shape, out.reward.shape
(torch.Size([4, 3]), torch.Size([4]))
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from tdppo import random as trand

__all__ = [
    "Dynamics",
    "TorchEnv",
    "AutoresetStep",
    "autoreset_step",
    "reset_uniforms",
    "round_to_float32",
]


class Dynamics(Protocol):
    """What :class:`TorchEnv` and the fused collector need from an environment.

    Discrete envs define ``n_actions`` (actions: int64 ``[*B]``); continuous ones define
    ``action_dim``, ``action_low`` and ``action_high`` (actions: ``[*B, action_dim]``).
    ``obs_low`` / ``obs_high`` are gymnasium's observation bounds (``None``: unbounded).
    """

    env_id: str
    state_dim: int
    obs_dim: int
    max_episode_steps: int
    discrete: bool
    obs_low: tuple[float, ...] | None
    obs_high: tuple[float, ...] | None

    def initial_state(self, u: Tensor) -> Tensor: ...  # [*B, state_dim] in [0, 1) -> state

    def observe(self, state: Tensor) -> Tensor: ...  # [*B, state_dim] -> [*B, obs_dim]

    def step(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


def round_to_float32(x: Tensor) -> Tensor:
    """``x`` rounded to float32 precision, kept in its dtype (a no-op for float32).

    Gymnasium computes some sub-expressions in float32 (its actions are float32, and numpy
    keeps float32 when a Python float joins in); the float64 envs round at the same places
    so that they agree with gymnasium to float64 precision rather than float32's.
    """
    return x.to(torch.float32).to(x.dtype)


def reset_uniforms(
    env_key: Tensor,
    env_index: Tensor,
    episode: Tensor,
    state_dim: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniforms in ``[0, 1)`` that reset env ``env_index`` at the start of episode ``episode``.

    Args:
        env_key: int64 scalar key (the env's ``rng_key``).
        env_index: int64 ``[*B]`` index of each env in its batch.
        episode: int64 ``[*B]`` index of the episode being started (broadcasts with ``env_index``).
        state_dim: trailing size of the draw.
        dtype: float dtype of the result.

    Returns:
        ``[*B, state_dim]``: ``uniform(fold_in(fold_in(env_key, i), k), (state_dim,), dtype)``.
    """
    keys = trand.fold_in(trand.fold_in(env_key, env_index), episode)
    return trand.uniform(keys, (state_dim,), dtype)


class AutoresetStep(NamedTuple):
    """One vector step with gymnasium's same-step autoreset (shapes for a batch ``[*B]``).

    ``next_observation`` is the observation the step reached (before any reset), the one to
    bootstrap from on truncation; ``observation`` / ``state`` / ``step_count`` / ``episode``
    are what the next step starts from (reset where ``done``).
    """

    next_observation: Tensor  # [*B, obs_dim]
    reward: Tensor  # [*B]
    terminated: Tensor  # [*B] bool
    truncated: Tensor  # [*B] bool
    observation: Tensor  # [*B, obs_dim]
    state: Tensor  # [*B, state_dim]
    step_count: Tensor  # [*B] int64
    episode: Tensor  # [*B] int64


def autoreset_step(
    dynamics: Dynamics,
    env_key: Tensor,
    state: Tensor,
    step_count: Tensor,
    episode: Tensor,
    action: Tensor,
    env_offset: int = 0,
) -> AutoresetStep:
    """Pure, branch-free step of a batch of envs, resetting the done ones in place.

    Args:
        dynamics: the env's dynamics object.
        env_key: int64 scalar key.
        state: ``[*B, state_dim]``; step_count, episode: int64 ``[*B]``.
        action: int64 ``[*B]`` (discrete) or ``[*B, action_dim]`` (continuous).

    Env ``i`` is ``env_offset`` plus the flat index into ``*B`` (a shard of a larger batch
    draws its resets as the whole batch would). Time limit: ``truncated = step_count + 1 >=
    max_episode_steps`` (gymnasium's ``TimeLimit``).
    """
    next_state, reward, terminated = dynamics.step(state, action)
    step_count = step_count + 1
    truncated = step_count >= dynamics.max_episode_steps
    done = terminated | truncated
    next_obs = dynamics.observe(next_state)
    episode = episode + done.to(torch.int64)
    batch = episode.shape
    env_index = env_offset + torch.arange(episode.numel(), device=episode.device).view(batch)
    reset_state = dynamics.initial_state(
        reset_uniforms(env_key, env_index, episode, dynamics.state_dim, state.dtype)
    )
    done_ = done.unsqueeze(-1)
    new_state = torch.where(done_, reset_state, next_state)
    return AutoresetStep(
        next_observation=next_obs,
        reward=reward,
        terminated=terminated,
        truncated=truncated,
        observation=torch.where(done_, dynamics.observe(reset_state), next_obs),
        state=new_state,
        step_count=torch.where(done, torch.zeros_like(step_count), step_count),
        episode=episode,
    )


class TorchEnv(EnvBase):
    """A batch of ``num_envs`` copies of one built-in env, as a stateless TorchRL env.

    Keys (batch size ``[num_envs]``): ``observation`` ``[n, obs_dim]``, ``state`` ``[n,
    state_dim]`` (gymnasium's ``env.unwrapped.state`` layout), ``step_count`` and ``episode``
    (int64 ``[n, 1]``; ``episode`` is the 0-based index of the current episode and picks the
    reset draw), ``action``; in ``"next"``: ``reward`` ``[n, 1]``, ``terminated``,
    ``truncated``, ``done`` (bool ``[n, 1]``).

    ``_step`` reads everything from the input TensorDict, so setting ``td["state"]`` sets the
    env. ``_reset`` with a ``"_reset"`` mask resets only the masked rows, branch-free. The
    generator state is the ``rng_key`` buffer (int64 scalar, set by ``seed=``/``set_seed``)
    plus the ``episode`` counters; ``episode_cache`` (a buffer, ``[n]``) mirrors the counters
    of the last TensorDict stepped or reset, because TorchRL's ``step_and_maybe_reset`` hands
    ``_reset`` nothing but the ``"_reset"`` mask.

    >>> from tdppo.envs import DYNAMICS
    >>> env = TorchEnv(DYNAMICS["CartPole-v1"], num_envs=3, seed=0)
    >>> td = env.rollout(5)
    >>> td["next", "observation"].shape
    torch.Size([3, 5, 4])
    """

    batch_locked = True

    def __init__(
        self,
        dynamics: Dynamics,
        num_envs: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        env_offset: int = 0,
    ) -> None:
        self.env_offset = int(env_offset)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        device = torch.device("cpu") if device is None else torch.device(device)
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.dynamics = dynamics
        self.float_dtype = dtype
        self.register_buffer("rng_key", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer(
            "episode_cache", torch.full((num_envs,), -1, dtype=torch.int64, device=device)
        )
        self._make_specs()
        self._set_seed(seed)

    # -- specs -------------------------------------------------------------------------------
    def _make_specs(self) -> None:
        dyn, n, dev, dt = self.dynamics, self.batch_size[0], self.device, self.float_dtype
        if dyn.obs_low is None:
            obs = Unbounded(shape=(n, dyn.obs_dim), dtype=dt, device=dev)
        else:
            low = torch.tensor(dyn.obs_low, dtype=dt, device=dev).expand(n, dyn.obs_dim)
            high = torch.tensor(dyn.obs_high, dtype=dt, device=dev).expand(n, dyn.obs_dim)
            obs = Bounded(low=low, high=high, shape=(n, dyn.obs_dim), dtype=dt, device=dev)
        carried = {
            "state": Unbounded(shape=(n, dyn.state_dim), dtype=dt, device=dev),
            "step_count": Unbounded(shape=(n, 1), dtype=torch.int64, device=dev),
            "episode": Unbounded(shape=(n, 1), dtype=torch.int64, device=dev),
        }
        self.observation_spec = Composite(observation=obs, **carried, shape=(n,), device=dev)
        self.state_spec = Composite(
            {k: v.clone() for k, v in carried.items()}, shape=(n,), device=dev
        )
        if dyn.discrete:
            self.action_spec = Categorical(dyn.n_actions, shape=(n,), dtype=torch.int64, device=dev)
        else:
            shape = (n, dyn.action_dim)
            low = torch.full(shape, dyn.action_low, dtype=dt, device=dev)
            high = torch.full(shape, dyn.action_high, dtype=dt, device=dev)
            self.action_spec = Bounded(low=low, high=high, shape=shape, dtype=dt, device=dev)
        self.reward_spec = Unbounded(shape=(n, 1), dtype=dt, device=dev)
        flag = Categorical(2, shape=(n, 1), dtype=torch.bool, device=dev)
        self.done_spec = Composite(
            done=flag.clone(),
            terminated=flag.clone(),
            truncated=flag.clone(),
            shape=(n,),
            device=dev,
        )

    # -- seeding -----------------------------------------------------------------------------
    def _set_seed(self, seed: int | None) -> None:
        """Set ``rng_key`` from ``seed`` (``None``: a seed from torch's global generator) and
        start the episode counters afresh."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self.rng_key.copy_(trand.key(seed, device=self.device))
        self.episode_cache.fill_(-1)

    # -- reset -------------------------------------------------------------------------------
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        dyn, n = self.dynamics, self.batch_size[0]
        td = tensordict if tensordict is not None else TensorDict({}, batch_size=[n])
        mask = td.get("_reset", None)
        prev_episode = td.get("episode", None)
        prev_episode = self.episode_cache if prev_episode is None else prev_episode.reshape(n)
        if mask is None:
            episode = prev_episode + 1
        else:
            mask = mask.reshape(n)
            episode = prev_episode + mask.to(torch.int64)
        env_index = self.env_offset + torch.arange(n, device=self.device)
        state = dyn.initial_state(
            reset_uniforms(self.rng_key, env_index, episode, dyn.state_dim, self.float_dtype)
        )
        step_count = torch.zeros((n, 1), dtype=torch.int64, device=self.device)
        flags = {
            k: torch.zeros((n, 1), dtype=torch.bool, device=self.device)
            for k in ("done", "terminated", "truncated")
        }
        if mask is not None:
            keep = ~mask.unsqueeze(-1)
            old_state = td.get("state", None)
            if old_state is not None:
                state = torch.where(keep, old_state, state)
            old_count = td.get("step_count", None)
            if old_count is not None:
                step_count = torch.where(keep, old_count, step_count)
            for k in flags:
                old = td.get(k, None)
                if old is not None:
                    flags[k] = keep & old
        self.episode_cache.copy_(episode)
        out = {
            "observation": dyn.observe(state),
            "state": state,
            "step_count": step_count,
            "episode": episode.unsqueeze(-1),
            **flags,
        }
        return TensorDict(out, batch_size=[n], device=self.device)

    # -- step --------------------------------------------------------------------------------
    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        dyn, n = self.dynamics, self.batch_size[0]
        state = tensordict.get("state")
        next_state, reward, terminated = dyn.step(state, tensordict.get("action"))
        step_count = tensordict.get("step_count", None)
        if step_count is None:
            step_count = torch.zeros((n, 1), dtype=torch.int64, device=self.device)
        step_count = step_count + 1
        episode = tensordict.get("episode", None)
        if episode is None:
            episode = self.episode_cache.unsqueeze(-1).clamp(min=0)
        self.episode_cache.copy_(episode.reshape(n))
        terminated = terminated.unsqueeze(-1)
        truncated = step_count >= dyn.max_episode_steps
        out = {
            "observation": dyn.observe(next_state),
            "state": next_state,
            "step_count": step_count,
            "episode": episode.clone(),
            "reward": reward.unsqueeze(-1),
            "terminated": terminated,
            "truncated": truncated,
            "done": terminated | truncated,
        }
        return TensorDict(out, batch_size=[n], device=self.device)

    def __repr__(self) -> str:
        return (
            f"TorchEnv({self.dynamics.env_id}, num_envs={self.batch_size[0]}, "
            f"device={self.device}, dtype={self.float_dtype})"
        )
