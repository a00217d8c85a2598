"""Reload a trained policy for use: raw observation in, action out, normalizer frozen inside."""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDict

from tdppo import nets
from tdppo.checkpoint import load_checkpoint
from tdppo.config import Config
from tdppo.population import is_population, member_state
from tdppo.setup import build_components
from tdppo.state import tensor_json
from tdppo.transforms import RunningObservationNorm

__all__ = ["DeployedPolicy", "load_policy", "load_state", "config_of"]


def config_of(state: TensorDict) -> Config:
    """The :class:`Config` a checkpointed state was trained with."""
    return Config.from_dict(tensor_json(state["meta", "config_json"]))


class DeployedPolicy(torch.nn.Module):
    """``forward(observation) -> action`` for raw (unnormalized) observations ``[*B, obs_dim]``.

    The observation normalizer's statistics are the checkpoint's, frozen (they never update,
    whatever mode the module is in); ``deterministic=True`` takes the distribution's mode.
    """

    def __init__(self, obs_norm, actor: torch.nn.Module, deterministic: bool = True):
        super().__init__()
        self.obs_norm = obs_norm
        self.actor = actor
        self.deterministic = deterministic
        if obs_norm is not None:
            obs_norm.freeze()
            obs_norm.eval()
        self.eval()

    @torch.no_grad()
    def forward(self, observation: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
        obs = observation
        if self.obs_norm is not None:
            td = TensorDict({"observation": obs}, batch_size=obs.shape[:-1])
            obs = self.obs_norm(td)["observation"]
        params = TensorDict.from_module(self.actor)
        dp = nets.dist_params(self.actor, params, obs)
        if self.deterministic or key is None:
            return nets.mode(dp)
        return nets.sample(dp, key)


def load_state(path: str | Path, device: torch.device, member: int | None = None) -> TensorDict:
    """A checkpoint's state in the single-agent layout (member ``member`` of a population)."""
    state = load_checkpoint(path, device=device)
    if is_population(state):
        if member is None:
            n = state["counters", "frames"].shape[0]
            raise ValueError(f"{path} holds a population of {n} agents: pass --member 0..{n - 1}")
        return member_state(state, member)
    if member is not None:
        raise ValueError(f"{path} holds a single agent; --member {member} does not apply")
    return state


def load_policy(
    path: str | Path,
    device: str | torch.device | None = None,
    deterministic: bool = True,
    member: int | None = None,
) -> DeployedPolicy:
    """Load the policy of the checkpoint at ``path`` (a run dir or one checkpoint dir);
    ``member`` picks one agent of a population checkpoint."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    state = load_state(path, device, member)
    cfg = config_of(state)
    env, actor, _ = build_components(
        cfg.__class__(**{**cfg.__dict__, "device": str(device)}), device
    )
    TensorDict.from_module(actor).data.update_(state["policy"])
    obs_norm = None
    live_t = TensorDict.from_module(env.transform)
    live_t.update_(state["transforms"])
    for t in getattr(env.transform, "transforms", [env.transform]):
        if isinstance(t, RunningObservationNorm):
            obs_norm = t
    env.close()
    return DeployedPolicy(obs_norm, actor, deterministic=deterministic).to(device)
