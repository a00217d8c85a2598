"""tdppo rows, through tdppo's public API only (``tdppo.Config``, ``tdppo.train``,
``tdppo.load_policy``, ``tdppo.evaluate``), with the same hyperparameters as the baselines.

``run`` returns what every baseline returns; the curve comes from the run's ``metrics.csv``
(``frames``, ``time_s``, ``episode_return_mean``), whose clock starts after setup, so the first
row carries ``torch.compile``. ``wall_s`` is measured here around ``tdppo.train`` (setup and
compilation included). The final evaluation runs the deployed policy (normaliser frozen inside)
on raw gymnasium envs with the seeds every baseline uses.
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import HYPER, Unavailable, evaluate_raw, steady_sps


def _api():
    """``(Config, train)`` or :class:`Unavailable` with a clear message."""
    try:
        import tdppo

        config_cls, train = tdppo.Config, tdppo.train
    except (ImportError, AttributeError) as e:
        raise Unavailable(f"tdppo.train not available yet ({type(e).__name__}: {e})") from e
    if not callable(train):  # the submodule ``tdppo.train`` shadowed the function
        train = getattr(train, "train", None)
    if not callable(train):
        raise Unavailable("tdppo.train not available yet (no callable tdppo.train)")
    return config_cls, train


def config_kwargs(
    env_id: str,
    frames: int,
    seed: int,
    num_envs: int,
    num_steps: int,
    epochs: int,
    minibatches: int,
    threads: int,
    backend: str,
    compile: bool,
) -> dict:
    """``tdppo.Config`` fields for a benchmark row: the shared hyperparameters, no presets."""
    return dict(
        env=env_id,
        frames=frames,
        seed=seed,
        num_envs=num_envs,
        num_steps=num_steps,
        epochs=epochs,
        minibatches=minibatches,
        lr=HYPER["lr"],
        gamma=HYPER["gamma"],
        gae_lambda=HYPER["gae_lambda"],
        clip_eps=HYPER["clip_coef"],
        ent_coef=HYPER["ent_coef"],
        vf_coef=HYPER["vf_coef"],
        max_grad_norm=HYPER["max_grad_norm"],
        adam_eps=HYPER["adam_eps"],
        clip_vloss=False,
        anneal_frames=0,
        backend=backend,
        compile=compile,
        threads=threads,
        device="cpu",
        checkpoint_every=0,
        eval_episodes=0,
        quiet=True,
    )


def read_metrics(path: Path) -> list[tuple[int, float, float]]:
    """``metrics.csv`` rows as a curve ``(frames, time_s, episode_return_mean)``."""
    curve = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("frames") or not row.get("time_s"):
                continue  # a note row
            ret = row.get("episode_return_mean") or "nan"
            curve.append((int(float(row["frames"])), float(row["time_s"]), float(ret)))
    return curve


def evaluate_run(run_dir: Path, env_id: str, episodes: int) -> float:
    """Deployed policy on raw gymnasium envs; falls back to ``tdppo.evaluate``."""
    import torch

    import tdppo

    try:
        policy = tdppo.load_policy(run_dir)
    except Exception:  # the deployed-policy path is not there: the library's own evaluation
        return float(tdppo.evaluate(run_dir, episodes=episodes, seed=10_000)["mean_return"])

    import gymnasium as gym

    discrete = isinstance(gym.make(env_id).action_space, gym.spaces.Discrete)

    def act(obs: np.ndarray) -> np.ndarray:
        a = policy(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0]
        if discrete and a.numel() > 1:  # one-hot action
            a = a.argmax(-1)
        return a.numpy()

    return evaluate_raw(env_id, act, episodes=episodes)


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
    backend: str = "torch",
    compile: bool = True,
) -> dict:
    """Train tdppo for ``frames`` env steps; return frames, wall_s, sps, curve, eval_return."""
    config_cls, train = _api()
    run_dir = Path(tempfile.mkdtemp(prefix="tdppo-bench-"))
    try:
        cfg = config_cls(
            **config_kwargs(
                env_id,
                frames,
                seed,
                num_envs,
                num_steps,
                epochs,
                minibatches,
                threads,
                backend,
                compile,
            ),  # fmt: skip
            run_dir=str(run_dir),
        )
        t0 = time.perf_counter()
        try:
            train(cfg)
        except NotImplementedError as e:  # the trainer is there, a component is not yet
            raise Unavailable(f"tdppo.train not available yet (NotImplementedError: {e})") from e
        wall_s = time.perf_counter() - t0
        curve = read_metrics(run_dir / "metrics.csv")
        if not curve:
            raise RuntimeError(f"tdppo wrote no metrics rows in {run_dir / 'metrics.csv'}")
        done = curve[-1][0]
        if log is not None:
            log(f"tdppo[{backend},compile={compile}] {env_id} seed={seed} frames={done}")
        eval_return = evaluate_run(run_dir, env_id, eval_episodes) if eval_episodes else math.nan
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "frames": done,
        "wall_s": wall_s,
        "sps": steady_sps(curve),
        "sps_total": done / wall_s,
        "curve": curve,
        "eval_return": eval_return,
    }


def env_only(
    env_id: str,
    frames: int,
    num_envs: int = 8,
    threads: int = 1,
    backend: str = "torch",
    compile: bool = True,
) -> dict:
    """Env-only ceiling of tdppo's collection path, random actions.

    backend "torch": the pure batched step (``tdppo.envs.autoreset_step`` with counter-RNG
    actions, compiled as in training), built by the ``env_throughput`` benchmark's
    ``build_pure`` (which resets dynamo's caches: call it after compiled training rows).
    backend "gym": ``tdppo.make_env(..., backend="gym")`` (normalisers on) rolled out.
    """
    import torch

    torch.set_num_threads(threads)
    steps = max(2, frames // num_envs)
    if backend == "torch":
        try:
            from benchmarks.env_throughput import build_pure
        except ImportError as e:
            raise Unavailable(f"tdppo env-only needs benchmarks/env_throughput.py ({e})") from e
        step = build_pure(env_id, num_envs, compile)  # compiled and warmed up
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t0
        return {"sps": steps * num_envs / wall, "frames": steps * num_envs, "wall_s": wall}
    try:
        import tdppo

        env = tdppo.make_env(env_id, num_envs, device="cpu", backend=backend, seed=0)
    except (ImportError, AttributeError, NotImplementedError) as e:
        raise Unavailable(f"tdppo.make_env not available yet ({type(e).__name__}: {e})") from e
    env.rollout(4, break_when_any_done=False)  # warm-up
    t0 = time.perf_counter()
    env.rollout(steps, break_when_any_done=False)
    wall = time.perf_counter() - t0
    env.close()
    return {"sps": steps * num_envs / wall, "frames": steps * num_envs, "wall_s": wall}


def update_only(
    env_id: str,
    num_envs: int = 8,
    num_steps: int = 256,
    epochs: int = 10,
    minibatches: int = 8,
    threads: int = 1,
    iters: int = 2,
    compile: bool = True,
) -> dict:
    """Update-only ceiling: ``tdppo.ppo.make_update`` on the ``update_speed`` benchmark's
    synthetic batch (its workload builder; Box actions only), first call (compilation) excluded.
    """
    import gymnasium as gym
    import torch

    try:
        from benchmarks import update_speed
        from tdppo import ppo

        workload, time_update = update_speed._workload, update_speed._time_update
    except (ImportError, AttributeError) as e:
        raise Unavailable(f"tdppo update-only needs benchmarks/update_speed.py ({e})") from e
    space = gym.make(env_id)
    obs_space, act_space = space.observation_space, space.action_space
    space.close()
    if not isinstance(act_space, gym.spaces.Box):
        raise Unavailable("tdppo update-only: update_speed's workload has Box actions only")
    torch.set_num_threads(threads)
    n = num_envs * num_steps
    actor, critic, params, opt_state, data, hp = workload(
        n, int(np.prod(obs_space.shape)), int(np.prod(act_space.shape))
    )
    update = ppo.make_update(
        actor, critic, epochs=epochs, minibatches=minibatches, clip_vloss=False, compile=compile
    )
    _first, times = time_update(update, params, opt_state, data, hp, iters)
    wall = float(np.median(times))
    return {"fps": n / wall, "frames": n * iters, "wall_s": float(np.sum(times))}
