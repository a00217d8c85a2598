"""Exact resume, in process: (N frames, then resume to 2N) == (2N frames straight), bit for bit.

The reference is the uninterrupted run; every top-level key but ``meta`` must be identical.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch

from tdppo import Config, train
from tdppo.checkpoint import CheckpointError, load_checkpoint
from tdppo.state import EXACT_KEYS

SMALL = dict(num_envs=4, num_steps=32, epochs=2, minibatches=4, quiet=True, eval_episodes=0)


def _cfg(env, tmp, frames, **kw):
    return Config.for_env(env, frames=frames, run_dir=str(tmp), **{**SMALL, **kw})


def assert_same_state(a, b):
    for top in EXACT_KEYS:
        la = a[top].flatten_keys("/")
        lb = b[top].flatten_keys("/")
        assert set(la.keys()) == set(lb.keys()), top
        for k in la.keys():
            x, y = la[k], lb[k]
            assert x.dtype == y.dtype and x.shape == y.shape, f"{top}/{k}"
            assert torch.equal(x, y), f"{top}/{k} differs"


@pytest.mark.parametrize(
    "env", ["Pendulum-v1", "CartPole-v1", "Acrobot-v1", "MountainCarContinuous-v0"]
)
def test_resume_bit_exact_every_env(env, tmp_path):
    n = 4 * 128  # 4 updates of 4 envs x 32 steps
    straight = train(_cfg(env, tmp_path / "a", 2 * n, compile=False, checkpoint_every=0))
    train(_cfg(env, tmp_path / "b", n, compile=False, checkpoint_every=0))
    resumed = train(_cfg(env, tmp_path / "b", 2 * n, compile=False, resume=True))
    assert_same_state(straight, resumed)
    # and what is on disk is what was returned
    assert_same_state(resumed, load_checkpoint(tmp_path / "b"))


@pytest.mark.parametrize("cadence", [128, 384])
def test_resume_any_cadence(cadence, tmp_path):
    n = 6 * 128
    straight = train(_cfg("CartPole-v1", tmp_path / "a", n, compile=False, checkpoint_every=0))
    train(_cfg("CartPole-v1", tmp_path / "b", 2 * 128, compile=False, checkpoint_every=cadence))
    resumed = train(
        _cfg("CartPole-v1", tmp_path / "b", n, compile=False, resume=True, checkpoint_every=cadence)
    )
    assert_same_state(straight, resumed)


@pytest.mark.compile
@pytest.mark.xdist_group("tiny-compiled")
def test_resume_bit_exact_compiled(tmp_path):
    n = 2 * 128
    # tests/test_driver.py's compiled single agent, so the two share their packages
    kw = dict(compile=True, hidden=(8,), num_steps=4, epochs=1, minibatches=2, threads=1)
    straight = train(_cfg("Pendulum-v1", tmp_path / "a", 2 * n, **kw))
    train(_cfg("Pendulum-v1", tmp_path / "b", n, **kw))
    resumed = train(_cfg("Pendulum-v1", tmp_path / "b", 2 * n, resume=True, **kw))
    assert_same_state(straight, resumed)


def test_resume_refuses_changed_fixed_fields(tmp_path):
    train(_cfg("CartPole-v1", tmp_path, 128, compile=False))
    with pytest.raises(ValueError) as e:
        train(_cfg("CartPole-v1", tmp_path, 256, compile=False, resume=True, num_envs=8, lr=1e-3))
    msg = str(e.value)
    assert "num_envs: 4 -> 8" in msg and "lr:" in msg


def test_resume_accepts_mutable_fields(tmp_path):
    train(_cfg("CartPole-v1", tmp_path, 128, compile=False))
    s = train(
        _cfg("CartPole-v1", tmp_path, 256, compile=False, resume=True, checkpoint_every=128, keep=2)
    )
    assert int(s["counters", "frames"]) == 256


def test_fresh_run_refuses_existing_run_dir(tmp_path):
    train(_cfg("CartPole-v1", tmp_path, 128, compile=False))
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="--resume"):
        train(_cfg("CartPole-v1", tmp_path, 128, compile=False))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises((CheckpointError, FileNotFoundError, ValueError)):
        train(_cfg("CartPole-v1", tmp_path / "nothing", 128, compile=False, resume=True))


def test_state_layout_and_views(tmp_path):
    s = train(_cfg("Pendulum-v1", tmp_path, 128, compile=False))
    assert set(s.keys()) >= {
        "policy", "value", "optimizer", "transforms", "env", "rng", "counters", "meta",
    }  # fmt: skip
    leaves = s["transforms"].flatten_keys("/").keys()
    assert any(k.endswith("mean") for k in leaves) and any(k.endswith("acc") for k in leaves)
    for name in ("frames", "updates", "steps", "episodes"):
        assert s["counters", name].dtype == torch.int64
    assert int(s["counters", "frames"]) == 128
    assert s["env", "state"].shape == (4, 2)


class Walk(gym.Env):
    """A gymnasium env whose state tdppo cannot capture (a private attribute, no ``state``)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, **kwargs):
        super().__init__()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._pos = 0.0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self._pos += 1.0 if action else -1.0
        return np.array([self._pos, 1.0], np.float32), 1.0, abs(self._pos) > 5, False, {}


gym.register("tdppo-test/Walk-v0", entry_point=Walk, max_episode_steps=50)


def test_gym_backend_resume_restarts_uncapturable_episodes_and_says_so(tmp_path, capsys):
    kw = dict(backend="gym", compile=False)
    train(_cfg("tdppo-test/Walk-v0", tmp_path, 128, **kw))
    saved = load_checkpoint(tmp_path)
    s = train(_cfg("tdppo-test/Walk-v0", tmp_path, 256, resume=True, **kw))
    assert "starts new episodes" in capsys.readouterr().err
    assert int(s["meta", "resume_reset_episodes"]) == 1
    # statistics continue from the checkpoint (frozen during the restart's reset)
    leaves = saved["transforms"].flatten_keys("/")
    count_key = next(k for k in leaves.keys() if k.endswith("count"))
    assert float(s["transforms"].flatten_keys("/")[count_key]) > float(leaves[count_key])
    assert int(s["counters", "frames"]) == 256


def test_resume_with_a_changed_exactness_field_says_so(tmp_path, capfd):
    """threads typed on resume (a mutable field that changes arithmetic): the run goes on, and
    stderr and metrics.csv both say bit-exactness is no longer promised."""
    import csv

    train(_cfg("CartPole-v1", tmp_path, 128, compile=False, threads=1))
    capfd.readouterr()
    train(_cfg("CartPole-v1", tmp_path, 256, compile=False, threads=2, resume=True))
    err = capfd.readouterr().err
    assert "threads: 1 -> 2" in err and "no longer promised" in err
    with open(tmp_path / "metrics.csv", newline="") as f:
        notes = [r["note"] for r in csv.DictReader(f) if r.get("note")]
    assert any("threads: 1 -> 2" in n and "no longer promised" in n for n in notes)
    torch.set_num_threads(1)
