"""``make_env``: the transformed env tdppo trains on, for a built-in or any gymnasium id.

Transforms, in order: ``RewardSum`` (episode return of the raw reward, ``episode_reward``),
then :class:`tdppo.transforms.RunningObservationNorm` (if ``normalize_obs``), then
:class:`tdppo.transforms.RunningRewardNorm` (if ``normalize_reward``).

>>> from tdppo.envs import make_env
>>> env = make_env("CartPole-v1", num_envs=4, seed=0)
>>> env.rollout(3)["next", "episode_reward"].shape
torch.Size([4, 3, 1])
"""

from __future__ import annotations

import torch
from torchrl.envs import EnvBase, GymEnv, TransformedEnv
from torchrl.envs.transforms import Compose, RewardSum

__all__ = ["make_env", "BACKENDS"]

BACKENDS = ("auto", "torch", "gym")


def _builtin_ids() -> list[str]:
    from tdppo.envs import DYNAMICS

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
    """

    def _async_env(self, env_fns, *args, **kwargs):
        import gymnasium

        return gymnasium.vector.SyncVectorEnv(
            env_fns, autoreset_mode=gymnasium.vector.AutoresetMode.DISABLED
        )


def _gym_env(env_id: str, num_envs: int, device: torch.device | str | None) -> EnvBase:
    """TorchRL's ``GymEnv`` over gymnasium's ``SyncVectorEnv``."""
    import gymnasium

    try:
        return _GymEnv(env_id, num_envs=num_envs, device=device, categorical_action_encoding=True)
    except gymnasium.error.DependencyNotInstalled as err:
        msg = str(err).splitlines()[0] if str(err) else "a dependency is missing"
        extra = " (or: pip install 'tdppo[mujoco]')" if "mujoco" in msg.lower() else ""
        raise ValueError(f"backend 'gym' cannot run {env_id!r}: {msg}{extra}") from None


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

    Returns:
        ``TransformedEnv`` with batch size ``[num_envs]``; ``episode_reward`` ``[B, 1]`` holds
        the running raw return of each episode.

    Raises:
        ValueError: unknown id, a backend that cannot run it, or a bad ``num_envs``, with a
            one-line message saying what is accepted.
    """
    from tdppo.transforms import RunningObservationNorm, RunningRewardNorm

    resolved = _check_args(env_id, num_envs, backend, dtype)
    if resolved == "torch":
        from tdppo.envs import DYNAMICS
        from tdppo.envs.base import TorchEnv

        base: EnvBase = TorchEnv(DYNAMICS[env_id], num_envs, device=device, dtype=dtype, seed=seed)
    else:
        base = _gym_env(env_id, num_envs, device)
        if seed is not None:
            base.set_seed(seed)
    transforms = [RewardSum()]
    if normalize_obs:
        spec = base.observation_spec["observation"]
        shape = spec.shape[len(base.batch_size) :]
        transforms.append(
            RunningObservationNorm(in_keys=["observation"], shape=shape, clip=obs_clip)
        )
    if normalize_reward:
        transforms.append(RunningRewardNorm(batch_shape=(num_envs,), gamma=gamma, clip=reward_clip))
    return TransformedEnv(base, Compose(*transforms))
