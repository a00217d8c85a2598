"""Bad input gets a clear message and never touches statistics or checkpoints."""

import math
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

from tdppo import Config, train
from tdppo.checkpoint import list_checkpoints


class NanAfter(gym.Env):
    """A 2-d observation env that emits NaN from its 40th step on (a broken simulator)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, **kwargs):  # TorchRL's GymEnv passes frameskip=1
        super().__init__()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(2, np.nan if self.t >= 40 else 0.1 * self.t, np.float32)
        return obs, 1.0, False, self.t >= 100, {}


gym.register("tdppo-test/NanAfter-v0", entry_point=NanAfter)

SMALL = dict(num_envs=2, num_steps=16, epochs=1, minibatches=2, quiet=True, eval_episodes=0)


def test_nan_observation_through_gym_backend_is_refused(tmp_path):
    cfg = Config(env="tdppo-test/NanAfter-v0", frames=256, run_dir=str(tmp_path), compile=False)
    with pytest.raises(ValueError, match="non-finite"):
        train(replace(cfg, **SMALL))
    assert list_checkpoints(tmp_path) == []  # nothing half-baked was saved


def test_nan_in_fused_rollout_is_refused_and_stats_untouched(tmp_path, monkeypatch):
    from tdppo.envs import DYNAMICS

    dyn = DYNAMICS["Pendulum-v1"]
    real = type(dyn).observe

    def broken(self, state):
        obs = real(self, state)
        return torch.where(state[..., :1] > 1.0, torch.nan, obs)  # NaN for some states

    monkeypatch.setattr(type(dyn), "observe", broken)
    cfg = Config(env="Pendulum-v1", frames=2048, run_dir=str(tmp_path), compile=False)
    with pytest.raises(ValueError, match="non-finite"):
        train(replace(cfg, **SMALL))


def test_bad_env_id_and_bad_config_are_one_line():
    with pytest.raises(ValueError, match="NoSuchEnv-v9"):
        train(Config(env="NoSuchEnv-v9", **SMALL))
    with pytest.raises(ValueError, match="divisible"):
        train(Config(num_envs=3, num_steps=5, minibatches=4, quiet=True))


@pytest.mark.parametrize("field", ["lr", "gamma", "adam_eps", "max_grad_norm", "obs_clip"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_hyperparameter_refused_before_anything_is_written(tmp_path, field, bad):
    cfg = Config(run_dir=str(tmp_path / "run"), compile=False, **SMALL, **{field: bad})
    with pytest.raises(ValueError, match=f"{field} must be a finite number") as e:
        train(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()
