"""Evaluate a checkpointed policy on fresh, unnormalized environments (statistics frozen)."""

from __future__ import annotations

from pathlib import Path

import torch

from tdppo import random as trand
from tdppo.envs import make_env
from tdppo.policy import config_of, load_policy, load_state

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    path: str | Path,
    episodes: int = 10,
    seed: int = 0,
    deterministic: bool = True,
    device: str | torch.device | None = None,
    member: int | None = None,
) -> dict:
    """Mean return of ``episodes`` episodes (one per env, run in one batch).

    Never updates or writes any statistic: the eval envs carry no normalizer, and the
    policy's observation normalizer is the checkpoint's, frozen.
    """
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1 (got {episodes})")
    device = torch.device(device) if device is not None else torch.device("cpu")
    policy = load_policy(path, device=device, deterministic=deterministic, member=member)
    cfg = config_of(load_state(path, device, member))
    env = make_env(
        cfg.env, episodes, device=device, backend=cfg.backend, normalize_obs=False,
        normalize_reward=False, seed=seed,
    )  # fmt: skip
    key = trand.key(seed, device)
    td = env.reset()
    returns = torch.zeros(episodes, dtype=torch.float64, device=device)
    lengths = torch.zeros(episodes, dtype=torch.int64, device=device)
    finished = torch.zeros(episodes, dtype=torch.bool, device=device)
    t = 0
    while not bool(finished.all()):
        td["action"] = policy(td["observation"], trand.fold_in(key, t))
        out, td = env.step_and_maybe_reset(td)  # a finished env restarts (masked below)
        r = out["next", "reward"].reshape(episodes).to(torch.float64)
        d = out["next", "done"].reshape(episodes)
        returns += torch.where(finished, 0.0, r)
        lengths += (~finished).long()
        finished |= d
        t += 1
    env.close()
    rets = returns.cpu().tolist()
    return {
        "mean_return": sum(rets) / len(rets),
        "episodes": episodes,
        "returns": rets,
        "mean_length": float(lengths.double().mean()),
    }
