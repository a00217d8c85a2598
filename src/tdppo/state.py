"""The one TrainState TensorDict: building it from live objects, and writing results back.

Layout (top-level keys are public, see DESIGN.md)::

    policy      actor parameters and buffers       views of the live actor (from_module)
    value       critic parameters and buffers      views of the live critic
    optimizer   Adam step, moments, lr             functional Adam state (tdppo.optim)
    transforms  every env transform's buffers      views: TensorDict.from_module(env.transform)
    env         the env's root TensorDict          observation the next step starts from,
                                                   physical state, step/episode counters, returns
                + "module": the base env's buffers (its RNG key for built-in envs)
    rng         {"key": root key}                  counter-based keys (tdppo.random); every draw
                                                   is fold_in(key, stream, counter)
    hp          float64 hyperparameters             lr, adam_eps, clip_eps, vf_coef, ent_coef,
                                                   max_grad_norm, gamma, gae_lambda (per member
                                                   in a population, where a sweep varies them)
    counters    frames, updates, steps, episodes   int64
    meta        config (JSON bytes), versions,     not part of exact equality
                wall-clock

What is stateful is discovered from the live objects (``from_module`` of the modules and of
the whole transform stack), never listed by hand: a transform added to the pipeline later
is saved and checked on load without anyone remembering to.
"""

from __future__ import annotations

import json
import time

import torch
from tensordict import TensorDict
from torchrl.envs import TransformedEnv

from tdppo import random as trand

__all__ = [
    "STREAMS",
    "EXACT_KEYS",
    "build_state",
    "env_carry",
    "json_tensor",
    "tensor_json",
    "write_back",
]

# Independent random streams derived from the root key.
STREAMS = {"policy": 1, "minibatch": 2}
# Top-level keys compared bit for bit by exact resume (everything but meta).
EXACT_KEYS = ("policy", "value", "optimizer", "transforms", "env", "rng", "counters", "hp")


def json_tensor(obj) -> torch.Tensor:
    """JSON-encode ``obj`` as a uint8 tensor (tensors memory-map without pickle)."""
    return torch.tensor(list(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8)


def tensor_json(t: torch.Tensor):
    return json.loads(bytes(t.cpu().tolist()).decode())


def build_state(
    *,
    actor: torch.nn.Module,
    critic: torch.nn.Module,
    env: TransformedEnv,
    carry: TensorDict,
    opt_state: TensorDict,
    hp: TensorDict,
    seed: int,
    config: dict,
    device: torch.device,
) -> TensorDict:
    """Gather the live pieces into one TensorDict (leaves are views, not copies)."""
    import tdppo

    env_module = TensorDict.from_module(env.base_env)
    meta = {
        "config_json": json_tensor(config),
        "versions_json": json_tensor(_versions()),
        "created_unix": torch.tensor(time.time(), dtype=torch.float64),
        "tdppo_version_json": json_tensor(tdppo.__version__),
    }
    zero = torch.zeros((), dtype=torch.int64, device=device)
    state = TensorDict(
        {
            "policy": TensorDict.from_module(actor).data,
            "value": TensorDict.from_module(critic).data,
            "optimizer": opt_state,
            "transforms": TensorDict.from_module(env.transform),
            "env": _env_subtree(carry, env_module),
            "rng": {"key": trand.key(seed, device=device)},
            "hp": hp,
            "counters": {
                "frames": zero.clone(),
                "updates": zero.clone(),
                "steps": zero.clone(),
                "episodes": zero.clone(),
            },
            "meta": meta,
        },
        batch_size=[],
    )
    return state


def _env_subtree(carry: TensorDict, env_module: TensorDict) -> TensorDict:
    """The env's root TensorDict (batch ``[num_envs]``) plus the base env's buffers."""
    env = TensorDict(dict(carry.items()), batch_size=[])
    if not env_module.is_empty():
        env["module"] = env_module
    return env


def env_carry(state: TensorDict, batch_size) -> TensorDict:
    """The rollout carry: ``state["env"]`` without the module buffers, batch ``[num_envs]``."""
    return TensorDict(dict(state["env"].exclude("module").items()), batch_size=batch_size)


def write_back(dest: TensorDict, src: TensorDict) -> None:
    """Copy ``src`` into ``dest`` in place, leaf by leaf (keeps live views in sync)."""
    with torch.no_grad():
        dest.update_(src)


def _versions() -> dict:
    import platform

    import tensordict
    import torchrl

    return {
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "python": platform.python_version(),
    }
