"""``make_env``: the transformed env tdppo trains on, for a built-in or any gymnasium id.

Transforms, in order: for a gymnasium env with float64 observations (MuJoCo), TorchRL's
``DoubleToFloat`` on ``observation`` (the env boundary: networks and the rollout see float32,
the normalizer statistics stay float64); ``RewardSum`` (episode return of the raw reward,
``episode_reward``); :class:`tdppo.transforms.RunningObservationNorm` (if ``normalize_obs``);
:class:`tdppo.transforms.RunningRewardNorm` (if ``normalize_reward``).

>>> from tdppo.envs import make_env
>>> env = make_env("CartPole-v1", num_envs=4, seed=0)
>>> env.rollout(3)["next", "episode_reward"].shape
torch.Size([4, 3, 1])
"""

from __future__ import annotations

import torch
from torchrl.envs import EnvBase, GymEnv, TransformedEnv
from torchrl.envs.transforms import Compose, DoubleToFloat, RewardSum

from tdppo.envs import gym_state
from tdppo.envs.base import TorchEnv
from tdppo.envs.gym_fast import action_clipper
from tdppo.envs.registry import DYNAMICS
from tdppo.transforms import RunningObservationNorm, RunningRewardNorm

__all__ = ["make_env", "BACKENDS"]

BACKENDS = ("auto", "torch", "gym")


def _builtin_ids() -> list[str]:
    return list(DYNAMICS)


def _check_args(env_id: str, num_envs: int, backend: str, dtype: torch.dtype) -> str:
    """Validate the arguments; the backend that will run ``env_id`` ("torch" or "gym")."""
    builtin = _builtin_ids()
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if backend == "torch" and env_id not in builtin:
        raise ValueError(
            f"backend 'torch' runs only the built-in envs ({', '.join(builtin)}); got "
            f"{env_id!r} (use backend 'gym' or 'auto' for other gymnasium ids)"
        )
    resolved = "torch" if backend in ("auto", "torch") and env_id in builtin else "gym"
    if resolved == "gym":
        import gymnasium

        try:
            gymnasium.spec(env_id)
        except gymnasium.error.Error as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"unknown env id {env_id!r} ({first}); built-in torch envs: "
                f"{', '.join(builtin)}; backend 'gym' runs any registered gymnasium id"
            ) from None
        if dtype != torch.float32:
            raise ValueError(
                f"dtype {dtype} needs backend 'torch' (built-in envs: {', '.join(builtin)}); "
                "gymnasium envs run in float32"
            )
    return resolved


class _GymEnv(GymEnv):
    """TorchRL's ``GymEnv`` over gymnasium's ``SyncVectorEnv`` in ``AutoresetMode.DISABLED``.

    - Sync, not TorchRL's default ``AsyncVectorEnv``: for cheap simulators one process stepping
      every env beats one subprocess per env exchanging pickles (and on a 2-core machine the
      subprocesses only compete); it is also what CleanRL and SB3's ``DummyVecEnv`` do.
    - Autoreset disabled: with gymnasium's default next-step autoreset, TorchRL 0.14.1's
      ``GymEnv(num_envs=...)`` emits, after every *partial* done, one spurious transition
      (gymnasium's reset step: the action ignored, reward 0). Disabled, TorchRL resets exactly
      the done envs through gymnasium's ``reset_mask`` (the mode TorchRL's wrapper prefers).

    Exact resume: when every sub-env's state can be captured
    (:func:`tdppo.envs.gym_state.unsupported_reason` is ``None``: classic control and MuJoCo),
    :meth:`enable_state_capture` registers the buffers ``sim`` (float64 ``[B, S]``) and
    ``ints`` (int64 ``[B, K]``) and the two methods ``capture_state()`` (simulators -> buffers)
    and ``restore_state()`` (buffers -> simulators). The buffers are the env's
    ``TensorDict.from_module`` leaves, so they are saved and strictly checked with every
    checkpoint. Envs that cannot be captured have neither the buffers nor the methods
    (``state_unsupported`` says why), and a resumed run restarts their episodes.
    """

    state_unsupported: str | None = "state capture not enabled"

    def read_action(self, action):
        """TorchRL's conversion to numpy, then :func:`tdppo.envs.gym_fast.action_clipper`: a
        Box action is clipped to its finite bounds before the env steps (what the fast collector
        does too), the action in the TensorDict is left as sampled."""
        return action_clipper(self._env.single_action_space)(super().read_action(action))

    def _async_env(self, env_fns, *args, **kwargs):
        import gymnasium

        return gymnasium.vector.SyncVectorEnv(
            env_fns, autoreset_mode=gymnasium.vector.AutoresetMode.DISABLED
        )

    def enable_state_capture(self) -> bool:
        """Register the state buffers and the capture/restore methods if the env allows it."""

        self.state_unsupported = gym_state.unsupported_reason(self._env)
        if self.state_unsupported is not None:
            return False
        self._state_layout = gym_state.GymStateLayout(self._env)
        for name, buf in self._state_layout.buffers().items():
            self.register_buffer(name, buf.to(self.device))
        # instance attributes, so ``hasattr(env, "capture_state")`` holds exactly when the
        # state can be captured (the driver's test)
        self.capture_state = self._capture_state
        self.restore_state = self._restore_state
        return True

    def _state_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        # TorchRL's wrapper forwards unknown attributes to the gymnasium env: ask nn.Module
        return self._buffers["sim"], self._buffers["ints"]

    def _capture_state(self) -> None:
        """Copy every sub-env's state (simulator, RNG, wrappers) into the buffers, in place."""

        gym_state.capture(self._env, self._state_layout, *self._state_buffers())

    def _restore_state(self) -> None:
        """Set every sub-env's state from the buffers (as ``capture_state`` wrote them)."""

        gym_state.restore(self._env, self._state_layout, *self._state_buffers())


def _gym_env(env_id: str, num_envs: int, device: torch.device | str | None) -> EnvBase:
    """TorchRL's ``GymEnv`` over gymnasium's ``SyncVectorEnv``, with state capture if possible."""
    import gymnasium

    try:
        env = _GymEnv(env_id, num_envs=num_envs, device=device, categorical_action_encoding=True)
    except gymnasium.error.DependencyNotInstalled as err:
        msg = str(err).splitlines()[0] if str(err) else "a dependency is missing"
        extra = " (or: pip install 'tdppo[mujoco]')" if "mujoco" in msg.lower() else ""
        raise ValueError(f"backend 'gym' cannot run {env_id!r}: {msg}{extra}") from None
    env.enable_state_capture()
    return env


def make_env(
    env_id: str,
    num_envs: int,
    device: torch.device | str | None = None,
    backend: str = "auto",
    normalize_obs: bool = True,
    normalize_reward: bool = True,
    gamma: float = 0.99,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    obs_clip: float = 10.0,
    reward_clip: float = 10.0,
    env_offset: int = 0,
) -> TransformedEnv:
    """A batch of ``num_envs`` envs of ``env_id`` with tdppo's transform stack.

    Args:
        env_id: a gymnasium id. The built-in ids (``tdppo.envs.DYNAMICS``) run as batched
            torch envs with backend "auto" or "torch"; any other id (or backend "gym") runs
            through TorchRL's ``GymEnv`` over gymnasium's vector env.
        num_envs: batch size ``B`` (a positive int).
        device: where the env's tensors live (default CPU).
        backend: "auto", "torch" or "gym".
        normalize_obs: append ``RunningObservationNorm`` (clamped to ``obs_clip``).
        normalize_reward: append ``RunningRewardNorm`` (``gamma``, clamped to ``reward_clip``).
        gamma: discount of the reward normalizer's return.
        seed: seeds the env (``None``: from torch's global generator for the torch envs).
        dtype: float dtype of the torch envs (float64 only with backend "torch").
        env_offset: these envs are envs ``env_offset...`` of a larger, data-parallel batch
            (their reset draws are those envs'; backend "torch").

    Returns:
        ``TransformedEnv`` with batch size ``[num_envs]``; ``episode_reward`` ``[B, 1]`` holds
        the running raw return of each episode.

    Raises:
        ValueError: unknown id, a backend that cannot run it, or a bad ``num_envs``, with a
            one-line message saying what is accepted.
    """
    resolved = _check_args(env_id, num_envs, backend, dtype)
    if resolved == "torch":
        base: EnvBase = TorchEnv(
            DYNAMICS[env_id], num_envs, device=device, dtype=dtype, seed=seed, env_offset=env_offset
        )
    else:
        base = _gym_env(env_id, num_envs, device)
        if seed is not None:
            base.set_seed(seed)
    transforms = []
    if base.observation_spec["observation"].dtype == torch.float64 and resolved == "gym":
        # MuJoCo: float64 observations, cast once at the env boundary (TorchRL's own transform)
        transforms.append(DoubleToFloat(in_keys=["observation"]))
    transforms.append(RewardSum())
    if normalize_obs:
        spec = base.observation_spec["observation"]
        shape = spec.shape[len(base.batch_size) :]
        transforms.append(
            RunningObservationNorm(in_keys=["observation"], shape=shape, clip=obs_clip)
        )
    if normalize_reward:
        transforms.append(RunningRewardNorm(batch_shape=(num_envs,), gamma=gamma, clip=reward_clip))
    return TransformedEnv(base, Compose(*transforms))
