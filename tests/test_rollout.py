"""The fused, compiled collector is the TransformedEnv pipeline, step for step.

Reference: TorchRL's own ``step_and_maybe_reset`` over the same ``TransformedEnv``
(``GenericCollector``), fed the same policy noise. Both paths run eagerly here; the compiled
fused step is compared with the eager one at the end.
"""

import pytest
import torch
from tensordict import TensorDict

from tdppo import nets
from tdppo import random as trand
from tdppo.envs import make_env
from tdppo.rollout import FusedCollector, GenericCollector

ENVS = ["Pendulum-v1", "CartPole-v1", "Acrobot-v1", "MountainCarContinuous-v0"]


def _setup(env_id, n, seed=0):
    env = make_env(env_id, n, seed=seed)
    obs_dim = env.observation_spec["observation"].shape[-1]
    torch.manual_seed(seed)
    actor = nets.make_actor(obs_dim, env.action_spec)
    return env, actor


def _run(collector_cls, env_id, n, steps, compile=False, chunks=1):
    env, actor = _setup(env_id, n)
    key = trand.fold_in(trand.key(0), 1)
    col = collector_cls(env, actor, key, compile)
    carry = env.reset()
    if collector_cls is FusedCollector:
        keep = ["observation", "state", "step_count", "episode", "episode_reward"]
        carry = carry.select(*keep)
    params = TensorDict.from_module(actor).data
    tstate = TensorDict.from_module(env.transform)
    batches = []
    per = steps // chunks
    for c in range(chunks):
        carry, new_t, batch = col.collect(
            carry, tstate, params, torch.tensor(c * per, dtype=torch.int64), per
        )
        tstate.update_(new_t)
        batches.append(batch)
    return carry, TensorDict.from_module(env.transform).clone(), torch.cat(batches, dim=1)


KEYS = [
    "observation",
    "action",
    "sample_log_prob",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "terminated"),
    ("next", "truncated"),
    ("next", "done"),
    ("next", "episode_reward"),
]


# long enough to cross each env's time limit (or, for CartPole, many terminations)
STEPS = {
    "Pendulum-v1": 260,
    "CartPole-v1": 200,
    "Acrobot-v1": 520,
    "MountainCarContinuous-v0": 1010,
}


@pytest.mark.parametrize("env_id", ENVS)
def test_fused_equals_transformed_env(env_id):
    steps = STEPS[env_id]
    c1, t1, b1 = _run(FusedCollector, env_id, 5, steps)
    c2, t2, b2 = _run(GenericCollector, env_id, 5, steps)
    assert b1["next", "done"].any(), "the test must cross episode ends"
    for k in KEYS:
        torch.testing.assert_close(b1[k], b2[k], rtol=1e-6, atol=1e-6, msg=f"key {k}")
    for k in ("observation", "state", "step_count", "episode", "episode_reward"):
        torch.testing.assert_close(c1[k], c2[k], rtol=1e-6, atol=1e-6, msg=f"carry {k}")
    for k, v in t1.items(include_nested=True, leaves_only=True):
        torch.testing.assert_close(v, t2[k], rtol=1e-9, atol=1e-9, msg=f"transforms {k}")


def test_chunked_collection_is_one_collection():
    # a rollout split in two calls (what a checkpoint between rollouts does) is the same rollout
    c1, t1, b1 = _run(FusedCollector, "CartPole-v1", 4, 120, chunks=1)
    c2, t2, b2 = _run(FusedCollector, "CartPole-v1", 4, 120, chunks=2)
    assert (b1 == b2).all()
    assert (t1 == t2).all()


@pytest.mark.compile
def test_compiled_fused_equals_eager():
    c1, t1, b1 = _run(FusedCollector, "Pendulum-v1", 8, 40, compile=False)
    c2, t2, b2 = _run(FusedCollector, "Pendulum-v1", 8, 40, compile=True)
    for k in KEYS:
        torch.testing.assert_close(b1[k], b2[k], rtol=1e-5, atol=1e-5, msg=f"key {k}")
