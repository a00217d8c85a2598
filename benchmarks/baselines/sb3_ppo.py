"""Stable-Baselines3 PPO, configured the way its docs and rl-zoo do it.

``make_vec_env`` (``DummyVecEnv`` of ``Monitor``-wrapped envs) under ``VecNormalize(norm_obs=True,
norm_reward=True)``; ``MlpPolicy`` with separate 64-64 tanh actor and critic (SB3's default for
PPO). A callback records the raw returns of the episodes that ``Monitor`` reports finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import HYPER, Unavailable, evaluate_raw, steady_sps


def _sb3():
    try:
        import stable_baselines3
        from stable_baselines3.common import callbacks, env_util, vec_env
    except ImportError as e:  # the `bench` extra is not installed
        raise Unavailable(f"stable-baselines3 not installed ({e})") from e
    return stable_baselines3, callbacks, env_util, vec_env


def make_model(
    env_id: str, seed: int, num_envs: int, num_steps: int, epochs: int, minibatches: int
):
    """The ``PPO`` model over ``VecNormalize(DummyVecEnv)`` with the shared hyperparameters."""
    sb3, _, env_util, vec_env = _sb3()
    venv = env_util.make_vec_env(
        env_id, n_envs=num_envs, seed=seed, vec_env_cls=vec_env.DummyVecEnv
    )
    venv = vec_env.VecNormalize(venv, norm_obs=True, norm_reward=True, gamma=HYPER["gamma"])
    model = sb3.PPO(
        "MlpPolicy",
        venv,
        learning_rate=HYPER["lr"],
        n_steps=num_steps,
        batch_size=num_envs * num_steps // minibatches,
        n_epochs=epochs,
        gamma=HYPER["gamma"],
        gae_lambda=HYPER["gae_lambda"],
        clip_range=HYPER["clip_coef"],
        ent_coef=HYPER["ent_coef"],
        vf_coef=HYPER["vf_coef"],
        max_grad_norm=HYPER["max_grad_norm"],
        policy_kwargs={
            "net_arch": {"pi": [64, 64], "vf": [64, 64]},
            "activation_fn": torch.nn.Tanh,
            "optimizer_kwargs": {"eps": HYPER["adam_eps"]},
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    # a logger with no outputs: with verbose=0 SB3 writes nothing anyway, but its default
    # logger makes an empty /tmp/SB3-<date> folder on every learn()
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def run(
    env_id: str,
    frames: int,
    seed: int,
    num_envs: int = 8,
    num_steps: int = 256,
    epochs: int = 10,
    minibatches: int = 8,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
    eval_episodes: int = 10,
) -> dict:
    """Train for ``frames`` env steps; return frames, wall_s, sps, curve, eval_return."""
    _, callbacks, _, _ = _sb3()
    torch.set_num_threads(threads)

    class Curve(callbacks.BaseCallback):
        """One curve point per rollout+update: raw returns of episodes finished meanwhile."""

        def __init__(self):
            super().__init__()
            self.points: list[tuple[int, float, float]] = []
            self.finished: list[float] = []
            self.start = 0.0

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.finished.append(float(info["episode"]["r"]))
            return True

        def _on_rollout_start(self) -> None:
            # called before each collection, i.e. after the previous update: close that point
            if self.num_timesteps > 0:
                self._close()

        def _close(self) -> None:
            ret = float(np.mean(self.finished)) if self.finished else float("nan")
            self.points.append((self.num_timesteps, time.perf_counter() - self.start, ret))
            self.finished = []
            if log is not None:
                n, wall = self.num_timesteps, self.points[-1][1]
                log(f"sb3 {env_id} seed={seed} frames={n} sps={n / wall:.0f}")

    model = make_model(env_id, seed, num_envs, num_steps, epochs, minibatches)
    curve = Curve()
    batch = num_envs * num_steps
    total = max(1, frames // batch) * batch
    t0 = time.perf_counter()
    model.learn(total_timesteps=total, callback=curve)
    curve._close()  # the last update has no following rollout start
    wall_s = time.perf_counter() - t0

    # EVALUATE: raw gymnasium env, VecNormalize statistics frozen, deterministic actions
    venv = model.get_env()
    venv.training = False

    def act(obs: np.ndarray) -> np.ndarray:
        action, _ = model.predict(venv.normalize_obs(obs[None]), deterministic=True)
        return action[0]

    eval_return = evaluate_raw(env_id, act, episodes=eval_episodes) if eval_episodes else None
    venv.close()
    return {
        "frames": model.num_timesteps,
        "wall_s": wall_s,
        "sps": steady_sps(curve.points),
        "sps_total": model.num_timesteps / wall_s,
        "curve": curve.points,
        "eval_return": float("nan") if eval_return is None else eval_return,
    }


# ----------------------------------------------------------------------------- ceilings


def env_only(env_id: str, frames: int, num_envs: int = 8, threads: int = 1) -> dict:
    """Env-only ceiling: ``VecNormalize(DummyVecEnv)`` stepped with random actions."""
    _, _, env_util, vec_env = _sb3()
    torch.set_num_threads(threads)
    venv = env_util.make_vec_env(env_id, n_envs=num_envs, seed=0, vec_env_cls=vec_env.DummyVecEnv)
    venv = vec_env.VecNormalize(venv, norm_obs=True, norm_reward=True, gamma=HYPER["gamma"])
    venv.reset()
    venv.action_space.seed(0)
    steps = max(2, frames // num_envs)
    t0 = time.perf_counter()
    for _ in range(steps):
        venv.step(np.stack([venv.action_space.sample() for _ in range(num_envs)]))
    wall = time.perf_counter() - t0
    venv.close()
    return {"sps": steps * num_envs / wall, "frames": steps * num_envs, "wall_s": wall}


def update_only(
    env_id: str,
    num_envs: int = 8,
    num_steps: int = 256,
    epochs: int = 10,
    minibatches: int = 8,
    threads: int = 1,
    iters: int = 2,
) -> dict:
    """Update-only ceiling: ``PPO.train()`` on one collected rollout buffer, timed alone."""
    torch.set_num_threads(threads)
    model = make_model(env_id, 0, num_envs, num_steps, epochs, minibatches)
    model.learn(total_timesteps=num_envs * num_steps)  # fills the rollout buffer, warms up
    t0 = time.perf_counter()
    for _ in range(iters):
        model.train()
    wall = time.perf_counter() - t0
    model.get_env().close()
    n = num_envs * num_steps * iters
    return {"fps": n / wall, "frames": n, "wall_s": wall}
