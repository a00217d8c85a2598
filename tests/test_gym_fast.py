"""GymFastCollector against the reference: TorchRL's own ``step_and_maybe_reset`` path
(``tdppo.rollout.GenericCollector``) on an identically built and seeded env, bit for bit."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from tdppo import nets
from tdppo import random as trand
from tdppo.envs import make_env
from tdppo.envs.gym_fast import GymFastCollector
from tdppo.rollout import GenericCollector


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """MuJoCo 4 writes MUJOCO_LOG.TXT into the working directory (a deprecation warning on
    gymnasium's half_cheetah.xml): keep it out of the repository."""
    monkeypatch.chdir(tmp_path)


CASES = [  # (id, num_envs, steps per collect, collects): episode ends inside the run
    ("CartPole-v1", 4, 24, 3),
    ("Pendulum-v1", 3, 70, 3),  # crosses the 200-step time limit
    ("HalfCheetah-v5", 2, 8, 2),  # float64 observations: the cast
    ("Hopper-v5", 2, 40, 2),  # terminations
]


def _setup(env_id, n, collector_cls):
    env = make_env(env_id, n, backend="gym", seed=3)
    obs_dim = env.observation_spec["observation"].shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        actor = nets.make_actor(obs_dim, env.action_spec, hidden=(16,))
    col = collector_cls(env, actor, trand.fold_in(trand.key(7), 1), compile=False)
    carry = env.reset().exclude("action", "sample_log_prob")
    return env, col, carry, TensorDict.from_module(actor).data


def _equal(a: TensorDict, b: TensorDict, what: str):
    la, lb = a.flatten_keys("/"), b.flatten_keys("/")
    assert set(la.keys()) <= set(lb.keys()) or set(lb.keys()) <= set(la.keys()), what
    for k in set(la.keys()) & set(lb.keys()):
        assert la[k].dtype == lb[k].dtype and la[k].shape == lb[k].shape, f"{what}/{k}"
        assert torch.equal(la[k], lb[k]), f"{what}/{k} differs"


@pytest.mark.parametrize("env_id,n,steps,collects", CASES, ids=[c[0] for c in CASES])
def test_fast_collector_equals_generic_collector(env_id, n, steps, collects):
    if env_id.endswith("-v5"):
        pytest.importorskip("mujoco", reason="needs the mujoco extra")
    env_a, ref, carry_a, params = _setup(env_id, n, GenericCollector)
    env_b, fast, carry_b, _ = _setup(env_id, n, GymFastCollector)
    try:
        keys = list(carry_a.keys())
        ends = 0
        for i in range(collects):
            steps0 = torch.tensor(i * steps)
            ta = TensorDict.from_module(env_a.transform).clone()
            tb = TensorDict.from_module(env_b.transform).clone()
            carry_a, ta, batch_a = ref.collect(carry_a, ta, params, steps0, steps)
            carry_b, tb, batch_b = fast.collect(carry_b, tb, params, steps0, steps)
            # the driver writes the returned statistics back into the transforms
            TensorDict.from_module(env_b.transform).update_(tb)
            assert set(batch_a.keys(True, True)) == set(batch_b.keys(True, True))
            _equal(batch_a, batch_b, f"batch {i}")
            _equal(carry_a.select(*keys), carry_b.select(*keys), f"carry {i}")
            _equal(ta, tb, f"transforms {i}")
            ends += int(batch_a["next", "done"].sum())
        assert ends > 0 or env_id == "HalfCheetah-v5"
    finally:
        env_a.close()
        env_b.close()


@pytest.mark.parametrize("collector_cls", [GenericCollector, GymFastCollector])
def test_box_actions_reach_the_env_clipped_as_gymnasiums_clip_action_does(collector_cls):
    """A wide Gaussian samples HalfCheetah actions far outside [-1, 1]. The batch keeps them as
    sampled (PPO's ratio needs their log-probability); the env sees them clipped: the raw
    rewards are those of gymnasium's own ``ClipAction`` vector wrapper replaying the same
    actions from the same state, and differ from an unclipped replay."""
    pytest.importorskip("mujoco", reason="needs the mujoco extra")
    import gymnasium
    import numpy as np

    def build():
        env = make_env("HalfCheetah-v5", 2, backend="gym", seed=5, normalize_obs=False,
                       normalize_reward=False)  # fmt: skip
        return env, env.reset().exclude("action", "sample_log_prob")

    env, carry = build()
    obs_dim = env.observation_spec["observation"].shape[-1]
    actor = nets.make_actor(obs_dim, env.action_spec, hidden=(16,), init_log_std=1.5)
    col = collector_cls(env, actor, trand.key(11), compile=False)
    ts = TensorDict.from_module(env.transform).clone()
    params = TensorDict.from_module(actor).data
    _, _, batch = col.collect(carry, ts, params, torch.tensor(0), 8)
    actions = batch["action"].numpy()  # [2, 8, 6]
    assert (np.abs(actions) > 1).mean() > 0.3  # stored unclipped
    rewards = {}
    for clipped in (True, False):
        ref, _ = build()  # the same seed: the same start states
        vec = ref.base_env._env
        vec = gymnasium.wrappers.vector.ClipAction(vec) if clipped else vec
        rewards[clipped] = np.stack(
            [vec.step(actions[:, t])[1] for t in range(actions.shape[1])], axis=1
        )
        ref.close()
    got = batch["next", "reward"].squeeze(-1).numpy()
    np.testing.assert_array_equal(got, rewards[True].astype(np.float32))
    assert not np.allclose(got, rewards[False].astype(np.float32))
    env.close()
