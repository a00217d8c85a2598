"""make_env: backends, transform stack, seeding, and its one-line errors.

References: TorchRL's ``check_env_specs``, ``GymEnv`` and ``RewardSum``; a plain Python
running sum of the raw rewards; gymnasium's own registry.
"""

from __future__ import annotations

import gymnasium
import pytest
import torch
from torchrl.envs import GymEnv, TransformedEnv
from torchrl.envs.transforms import RewardSum
from torchrl.envs.utils import check_env_specs

import tdppo
from tdppo.envs import DYNAMICS, TorchEnv, make_env
from tdppo.transforms import RunningObservationNorm, RunningRewardNorm

BUILTIN = list(DYNAMICS)


def _actions(env, steps: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    spec = env.action_spec
    if spec.dtype == torch.int64:
        return [torch.randint(0, spec.space.n, spec.shape, generator=gen) for _ in range(steps)]
    low, high = spec.space.low, spec.space.high
    return [
        low + (high - low) * torch.rand(spec.shape, generator=gen, dtype=spec.dtype)
        for _ in range(steps)
    ]


def _rollout(env, actions):
    td = env.reset()
    out = []
    for a in actions:
        td["action"] = a
        data, td = env.step_and_maybe_reset(td)
        out.append(data.clone())
    return torch.stack(out, 1)


def test_exported_from_the_package():
    assert tdppo.make_env is make_env


@pytest.mark.parametrize("env_id", BUILTIN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_builtin_stack_and_specs(env_id, dtype):
    env = make_env(env_id, 5, seed=0, dtype=dtype, gamma=0.9, obs_clip=4.0, reward_clip=3.0)
    assert isinstance(env, TransformedEnv) and isinstance(env.base_env, TorchEnv)
    assert env.batch_size == (5,)
    ts = list(env.transform)
    assert [type(t) for t in ts] == [RewardSum, RunningObservationNorm, RunningRewardNorm]
    assert ts[1].clip == 4.0 and ts[1].mean.shape == (DYNAMICS[env_id].obs_dim,)
    assert ts[2].clip == 3.0 and ts[2].acc.shape == (5, 1) and float(ts[2].gamma) == 0.9
    check_env_specs(env, seed=0)
    td = env.rollout(4, break_when_any_done=False)
    assert td["next", "observation"].dtype == dtype
    assert td["next", "observation"].abs().max() <= 4.0
    assert td["next", "episode_reward"].shape == (5, 4, 1)


def test_normalizers_are_optional():
    env = make_env("Acrobot-v1", 3, normalize_obs=False, normalize_reward=False, seed=0)
    assert [type(t) for t in env.transform] == [RewardSum]
    env = make_env("Acrobot-v1", 3, normalize_obs=False, seed=0)
    assert [type(t) for t in env.transform] == [RewardSum, RunningRewardNorm]


def test_episode_reward_is_the_raw_return():
    """``episode_reward`` against a Python running sum of the raw rewards of an env without
    the reward normalizer (same seed, same actions), across time-limit resets."""
    kw = dict(env_id="Pendulum-v1", num_envs=3, seed=4)
    normed = make_env(**kw)
    raw = make_env(**kw, normalize_obs=False, normalize_reward=False)
    acts = _actions(raw, 230, seed=0)
    a, b = _rollout(normed, acts), _rollout(raw, acts)
    assert not torch.equal(a["next", "reward"], b["next", "reward"])  # normalized
    ret = torch.zeros(3)
    for t in range(230):
        ret = ret + b["next", "reward"][:, t, 0]
        assert torch.allclose(a["next", "episode_reward"][:, t, 0], ret, rtol=1e-6, atol=1e-3)
        ret = torch.where(b["next", "done"][:, t, 0], torch.zeros(3), ret)
    assert b["next", "truncated"][:, 199].all()


def test_seed_makes_runs_reproducible():
    acts = _actions(make_env("CartPole-v1", 6, seed=0), 80, seed=1)
    r1 = _rollout(make_env("CartPole-v1", 6, seed=0), acts)
    r2 = _rollout(make_env("CartPole-v1", 6, seed=0), acts)
    r3 = _rollout(make_env("CartPole-v1", 6, seed=1), acts)
    assert (r1 == r2).all()
    assert not torch.equal(r1["observation"], r3["observation"])


def _one_line_value_error(match: str, *args, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as info:
        make_env(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_error_messages():
    msg = _one_line_value_error("unknown env id 'NoSuchEnv-v0'", "NoSuchEnv-v0", 2)
    for env_id in BUILTIN:
        assert env_id in msg
    for bad in (0, -1, 2.5, True, "8"):
        _one_line_value_error("num_envs must be a positive int", "CartPole-v1", bad)
    msg = _one_line_value_error("backend must be one of", "CartPole-v1", 2, backend="jax")
    assert "auto, torch, gym" in msg
    msg = _one_line_value_error("backend 'torch' runs only", "MountainCar-v0", 2, backend="torch")
    assert all(env_id in msg for env_id in BUILTIN)
    _one_line_value_error(
        "needs backend 'torch'", "CartPole-v1", 2, backend="gym", dtype=torch.float64
    )
    _one_line_value_error("dtype must be", "CartPole-v1", 2, dtype=torch.float16)


def test_missing_dependency_is_a_value_error(monkeypatch):
    """A registered id whose simulator is not installed (MuJoCo here) gets a one-line
    ValueError naming the extra, not gymnasium's exception type."""
    import tdppo.envs.make as make_mod

    def no_mujoco(*args, **kwargs):
        raise gymnasium.error.DependencyNotInstalled(
            'MuJoCo is not installed, run `pip install "gymnasium[mujoco]"`'
        )

    monkeypatch.setattr(make_mod, "_GymEnv", no_mujoco)
    msg = _one_line_value_error("backend 'gym' cannot run 'HalfCheetah-v5'", "HalfCheetah-v5", 2)
    assert "tdppo[mujoco]" in msg


def test_gym_backend_for_any_id_and_for_builtin_ids():
    """A non-built-in id runs through TorchRL's GymEnv; a built-in one can be asked for with
    backend "gym", and its specs then match the torch env's."""
    env = make_env("MountainCar-v0", 2, seed=0)
    try:
        assert isinstance(env.base_env, GymEnv)
        assert [type(t) for t in env.transform] == [
            RewardSum,
            RunningObservationNorm,
            RunningRewardNorm,
        ]
        assert env.action_spec.dtype == torch.int64 and env.action_spec.shape == (2,)
        check_env_specs(env, seed=0)
    finally:
        env.close()
    g = make_env(
        "CartPole-v1", 2, backend="gym", seed=0, normalize_obs=False, normalize_reward=False
    )
    t = make_env("CartPole-v1", 2, seed=0, normalize_obs=False, normalize_reward=False)
    try:
        assert isinstance(g.base_env, GymEnv)
        for key in ("observation",):
            gs, ts = g.observation_spec[key], t.observation_spec[key]
            assert gs.shape == ts.shape and gs.dtype == ts.dtype
            torch.testing.assert_close(gs.space.low, ts.space.low)
            torch.testing.assert_close(gs.space.high, ts.space.high)
        assert g.action_spec.shape == t.action_spec.shape
        assert g.action_spec.dtype == t.action_spec.dtype == torch.int64
        assert g.action_spec.space.n == t.action_spec.space.n
        assert g.reward_spec.shape == t.reward_spec.shape
        assert set(g.done_keys) == set(t.done_keys)
        # partial resets: every transition is a real CartPole step (reward 1; no leftover
        # autoreset step of gymnasium's vector env), and each episode restarts from a state
        # in gymnasium's reset range
        for env in (g, t):
            r = env.rollout(120, break_when_any_done=False)
            done = r["next", "done"][..., 0]
            assert (done.any(0) & ~done.all(0)).any(), "needs a partial done"
            assert (r["next", "reward"] == 1).all()
            obs, nxt = r["observation"], r["next", "observation"]
            assert ((nxt[:, :-1] == obs[:, 1:]).all(-1) | done[:, :-1]).all()
            assert obs[:, 1:][done[:, :-1]].abs().max() <= 0.05
    finally:
        g.close()


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5"])
def test_mujoco_observations_are_cast_at_the_env_boundary(env_id, tmp_path, monkeypatch):
    """MuJoCo observations are float64: TorchRL's ``DoubleToFloat`` casts them before any other
    transform (networks and rollouts see float32); the normalizer statistics stay float64."""
    pytest.importorskip("mujoco", reason="needs the mujoco extra: pip install 'tdppo[mujoco]'")
    from torchrl.envs.transforms import DoubleToFloat

    monkeypatch.chdir(tmp_path)  # MuJoCo 4 writes MUJOCO_LOG.TXT (half_cheetah.xml deprecation)

    env = make_env(env_id, 2, seed=0)
    try:
        assert env.base_env.observation_spec["observation"].dtype == torch.float64
        assert [type(t) for t in env.transform] == [
            DoubleToFloat,
            RewardSum,
            RunningObservationNorm,
            RunningRewardNorm,
        ]
        assert env.observation_spec["observation"].dtype == torch.float32
        check_env_specs(env, seed=0)
        td = env.rollout(5, break_when_any_done=False)
        assert td["observation"].dtype == td["next", "observation"].dtype == torch.float32
        # the cast is the only change: the raw float64 observation, rounded once
        raw = make_env(env_id, 2, seed=0, normalize_obs=False, normalize_reward=False)
        ref = make_env(env_id, 2, seed=0, normalize_obs=False, normalize_reward=False).base_env
        acts = _actions(raw, 5, seed=3)
        a, b = _rollout(raw, acts), _rollout(ref, acts)
        assert b["next", "observation"].dtype == torch.float64
        assert torch.equal(a["next", "observation"], b["next", "observation"].float())
        norm = env.transform[2]
        assert norm.mean.dtype == norm.var.dtype == norm.count.dtype == torch.float64
    finally:
        env.close()


def test_float32_gym_envs_get_no_cast():
    env = make_env("MountainCar-v0", 2, seed=0)
    try:
        assert env.base_env.observation_spec["observation"].dtype == torch.float32
        assert [type(t) for t in env.transform][0] is RewardSum
    finally:
        env.close()


@pytest.mark.slow
def test_mujoco_train_resume_eval_through_the_cli(tmp_path):
    """What a user types (issue 10, item 4): train, resume, eval a MuJoCo id, in subprocesses
    (Hopper, which also terminates episodes, runs the same path in process below)."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("mujoco", reason="needs the mujoco extra: pip install 'tdppo[mujoco]'")
    from tdppo.checkpoint import load_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"

    def cli(*args):
        p = subprocess.run(
            [sys.executable, "-m", "tdppo", *map(str, args)],
            capture_output=True, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
        return p

    cli(
        "train", "--env", "HalfCheetah-v5", "--frames", 256, "--num-envs", 2, "--num-steps", 32,
        "--minibatches", 4, "--epochs", 1, "--no-compile", "--quiet", "--eval-episodes", 0,
        "--run-dir", run,
    )  # fmt: skip
    cli("train", "--resume", "--run-dir", run, "--frames", 512)
    state = load_checkpoint(run)
    assert int(state["counters", "frames"]) == 512
    assert state["policy"].flatten_keys("/").apply(lambda x: x.isfinite().all()).all()
    res = json.loads(cli("eval", run, "--episodes", 1).stdout.strip().splitlines()[-1])
    assert res["episodes"] == 1 and res["mean_return"] == res["mean_return"]  # finite, not NaN


def test_mujoco_train_resume_eval_in_process(tmp_path, monkeypatch):
    pytest.importorskip("mujoco", reason="needs the mujoco extra: pip install 'tdppo[mujoco]'")
    from tdppo import Config, train
    from tdppo.checkpoint import load_checkpoint
    from tdppo.evaluation import evaluate

    monkeypatch.chdir(tmp_path)
    kw = dict(
        run_dir=str(tmp_path), num_envs=2, num_steps=32, minibatches=4, epochs=1, compile=False,
        quiet=True, eval_episodes=0, threads=1,
    )  # fmt: skip
    train(Config.for_env("Hopper-v5", frames=256, **kw))
    train(Config.for_env("Hopper-v5", frames=512, resume=True, **kw))
    state = load_checkpoint(tmp_path)
    assert int(state["counters", "frames"]) == 512
    assert int(state["counters", "episodes"]) > 0  # Hopper falls: resets ran
    res = evaluate(tmp_path, episodes=2, seed=1)
    assert res["episodes"] == 2 and all(r == r for r in res["returns"])
