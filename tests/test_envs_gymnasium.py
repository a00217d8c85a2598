"""The built-in torch envs against gymnasium 1.x itself (the reference), step for step.

States are set through ``env.unwrapped.state`` and stepped with the same actions. Gymnasium
returns float32 observations, so in float64 the observation is checked twice: against
gymnasium's float32 observation at float32 resolution, and against gymnasium's observation
formula evaluated in numpy float64 on gymnasium's own next state. Continuous actions are fed to
gymnasium as float32 arrays in the float32 tests (its action space) and as float64 arrays in
the float64 tests (the float64 envs are gymnasium's arithmetic fed float64 actions).
"""

from __future__ import annotations

import zlib

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.envs.utils import step_mdp

from tdppo.envs import DYNAMICS, TorchEnv

ENV_IDS = list(DYNAMICS)
N_STATES = 1000
PI = np.pi


# -- numpy float64 references ------------------------------------------------------------------
def obs64(env_id: str, s: np.ndarray) -> np.ndarray:
    """Gymnasium's ``_get_obs`` formula in float64 (no float32 cast), for a batch ``[N, d]``."""
    s = np.asarray(s, dtype=np.float64)
    if env_id == "Pendulum-v1":
        return np.stack([np.cos(s[:, 0]), np.sin(s[:, 0]), s[:, 1]], axis=1)
    if env_id == "Acrobot-v1":
        c, n = np.cos, np.sin
        return np.stack([c(s[:, 0]), n(s[:, 0]), c(s[:, 1]), n(s[:, 1]), s[:, 2], s[:, 3]], axis=1)
    return s


def gym_reset_states(env_id: str, n: int, seed: int) -> np.ndarray:
    """``n`` initial states drawn by gymnasium's own ``reset`` (its RNG stream from ``seed``)."""
    env = gym.make(env_id).unwrapped
    env.reset(seed=seed)
    out = []
    for _ in range(n):
        env.reset()
        out.append(np.array(env.state, dtype=np.float64))
    return np.stack(out)


def edge_states(env_id: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """States spread over the reachable space, half of them near the termination thresholds
    (or, for Pendulum, anywhere on the clipped velocity range and several turns of angle)."""
    u = rng.uniform
    if env_id == "Pendulum-v1":
        return np.stack([u(-3 * PI, 3 * PI, n), u(-8, 8, n)], axis=1)
    if env_id == "CartPole-v1":
        side = rng.choice([-1.0, 1.0], size=(n, 2))
        x = np.where(np.arange(n) % 2 == 0, side[:, 0] * u(2.3, 2.5, n), u(-2.4, 2.4, n))
        th = np.where(np.arange(n) % 2 == 1, side[:, 1] * u(0.19, 0.23, n), u(-0.2, 0.2, n))
        return np.stack([x, u(-3, 3, n), th, u(-3, 3, n)], axis=1)
    if env_id == "Acrobot-v1":
        s = np.stack(
            [u(-PI, PI, 8 * n), u(-PI, PI, 8 * n), u(-4 * PI, 4 * PI, 8 * n), u(-9, 9, 8 * n)],
            axis=1,
        )
        height = -np.cos(s[:, 0]) - np.cos(s[:, 0] + s[:, 1])
        near = s[np.abs(height - 1.0) < 0.3][: n // 2]
        wide = s[: n - len(near)]
        wide[: n // 8, 2] = rng.choice([-1, 1], n // 8) * u(3.9 * PI, 4.1 * PI, n // 8)
        return np.concatenate([near, wide]).astype(np.float32).astype(np.float64)
    # MountainCarContinuous: near the goal, at the left wall, anywhere
    k = n // 3
    pos = np.concatenate([u(0.35, 0.6, k), u(-1.2, -1.1, k), u(-1.2, 0.6, n - 2 * k)])
    vel = np.concatenate([u(-0.07, 0.07, k), u(-0.07, 0.01, k), u(-0.07, 0.07, n - 2 * k)])
    return np.stack([pos, vel], axis=1).astype(np.float32).astype(np.float64)


def sample_actions(env_id: str, n: int, rng: np.random.Generator, dtype: np.dtype):
    """Random actions: integers for discrete envs; for continuous ones uniform on the box with
    1 in 10 outside it (gymnasium clips inside ``step``)."""
    dyn = DYNAMICS[env_id]
    if dyn.discrete:
        return rng.integers(0, dyn.n_actions, size=n)
    a = rng.uniform(dyn.action_low, dyn.action_high, size=(n, 1))
    a[::10] *= 1.5
    return a.astype(dtype)


def gym_state(env_id: str, s: np.ndarray) -> np.ndarray:
    """The array gymnasium holds as ``unwrapped.state`` (float32 for MountainCarContinuous,
    whose state gymnasium stores as float32 after every step)."""
    if env_id == "MountainCarContinuous-v0":
        return np.array(s, dtype=np.float32)
    return np.array(s, dtype=np.float64)


def gym_step_all(env_id: str, states: np.ndarray, actions: np.ndarray):
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    obs, rew, term, nxt = [], [], [], []
    for s, a in zip(states, actions):
        env.state = gym_state(env_id, s)
        env.steps_beyond_terminated = None  # CartPole: a fresh state, not a post-done step
        o, r, te, tr, _ = env.step(a)
        assert not tr
        obs.append(o)
        rew.append(r)
        term.append(te)
        nxt.append(np.array(env.state, dtype=np.float64))
    return np.stack(obs), np.array(rew, dtype=np.float64), np.array(term), np.stack(nxt)


def test_registry_matches_gymnasium_spaces():
    for env_id, dyn in DYNAMICS.items():
        env = gym.make(env_id)
        assert dyn.env_id == env_id
        assert env.spec.max_episode_steps == dyn.max_episode_steps
        space = env.observation_space
        assert space.shape == (dyn.obs_dim,)
        np.testing.assert_array_equal(np.array(dyn.obs_low, dtype=np.float32), space.low)
        np.testing.assert_array_equal(np.array(dyn.obs_high, dtype=np.float32), space.high)
        if dyn.discrete:
            assert env.action_space.n == dyn.n_actions
        else:
            assert env.action_space.shape == (dyn.action_dim,)
            assert env.action_space.low[0] == dyn.action_low
            assert env.action_space.high[0] == dyn.action_high


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_one_step_matches_gymnasium(env_id, dtype):
    dyn = DYNAMICS[env_id]
    rng = np.random.default_rng(zlib.crc32(f"{env_id}{dtype}".encode()))
    states = np.concatenate(
        [gym_reset_states(env_id, N_STATES, seed=1), edge_states(env_id, N_STATES, rng)]
    )
    f64 = dtype == torch.float64
    if not f64 or env_id == "MountainCarContinuous-v0":
        # both sides start from the same float32-representable state (MountainCar: the
        # float32 array gymnasium holds after every step)
        states = states.astype(np.float32).astype(np.float64)
    actions = sample_actions(env_id, len(states), rng, np.float64 if f64 else np.float32)
    g_obs, g_rew, g_term, g_next = gym_step_all(env_id, states, actions)
    assert g_term.any() or env_id == "Pendulum-v1"  # thresholds are exercised

    act_dtype = torch.int64 if dyn.discrete else dtype
    next_state, reward, terminated = dyn.step(
        torch.tensor(states, dtype=dtype), torch.tensor(actions).to(act_dtype)
    )
    obs = dyn.observe(next_state)
    assert next_state.dtype == dtype and obs.dtype == dtype and reward.dtype == dtype
    assert terminated.dtype == torch.bool
    np.testing.assert_array_equal(terminated.numpy(), g_term)
    if f64:
        np.testing.assert_allclose(next_state.numpy(), g_next, rtol=0, atol=1e-10)
        np.testing.assert_allclose(reward.numpy(), g_rew, rtol=0, atol=1e-10)
        np.testing.assert_allclose(obs.numpy(), obs64(env_id, g_next), rtol=0, atol=1e-10)
        np.testing.assert_allclose(obs.numpy(), g_obs, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_allclose(obs.numpy(), g_obs, rtol=0, atol=1e-5)
        np.testing.assert_allclose(reward.numpy(), g_rew, rtol=0, atol=1e-5)


def _policy(env_id: str, kind: str, obs: np.ndarray, rng: np.random.Generator, dtype):
    """Actions chosen on gymnasium's observation: random, or a controller that reaches the
    goal (Acrobot, MountainCar) or balances until the time limit (CartPole)."""
    if kind == "random":
        return sample_actions(env_id, 1, rng, dtype)[0]
    if env_id == "CartPole-v1":
        return int(obs[2] + 0.5 * obs[3] + 0.01 * obs[0] + 0.1 * obs[1] > 0)
    if env_id == "Acrobot-v1":
        return 2 if obs[5] > 0 else 0
    if env_id == "MountainCarContinuous-v0":
        return np.array([1.0 if obs[1] >= 0 else -1.0], dtype=dtype)
    return np.array([2.0 if obs[2] >= 0 else -2.0], dtype=dtype)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_float64_trajectories_match_gymnasium(env_id):
    """200-step float64 trajectories from gymnasium's initial states, stopped where gymnasium
    terminates: every state and reward within 1e-8."""
    dyn = DYNAMICS[env_id]
    rng = np.random.default_rng(7)
    n_traj = 8
    init = gym_reset_states(env_id, n_traj, seed=3)
    if env_id == "MountainCarContinuous-v0":
        init = init.astype(np.float32).astype(np.float64)
    state = torch.tensor(init, dtype=torch.float64)
    alive = np.ones(n_traj, dtype=bool)
    envs = [gym.make(env_id).unwrapped for _ in range(n_traj)]
    for e, s in zip(envs, init):
        e.reset(seed=0)
        e.state = gym_state(env_id, s)
    steps = 0
    for _t in range(200):
        acts, results = [], []
        for i, e in enumerate(envs):
            kind = "random" if i % 2 == 0 else "controller"
            o = obs64(env_id, np.asarray(e.state)[None])[0]
            acts.append(_policy(env_id, kind, o, rng, np.float64))
            if alive[i]:
                _, r, te, _, _ = e.step(acts[i])
                results.append((np.array(e.state, dtype=np.float64), r, te))
            else:
                results.append((np.zeros(dyn.state_dim), 0.0, True))
        a = torch.tensor(np.stack(acts))
        state, reward, term = dyn.step(state, a if dyn.discrete else a.to(torch.float64))
        g_next = np.stack([r[0] for r in results])
        np.testing.assert_allclose(state.numpy()[alive], g_next[alive], rtol=0, atol=1e-8)
        g_rew = np.array([r[1] for r in results])
        np.testing.assert_allclose(reward.numpy()[alive], g_rew[alive], rtol=0, atol=1e-8)
        g_term = np.array([r[2] for r in results])
        np.testing.assert_array_equal(term.numpy()[alive], g_term[alive])
        steps += alive.sum()
        alive &= ~g_term
        if not alive.any():
            break
    assert steps >= 200  # at least one full-length trajectory's worth of compared steps


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_termination_and_truncation_fire_with_gymnasium_make(env_id):
    """From the same initial states and actions, ``gymnasium.make(id)`` (with its TimeLimit)
    and TorchEnv end each episode at the same step with the same terminated/truncated."""
    dyn = DYNAMICS[env_id]
    n = 4
    rng = np.random.default_rng(11)
    env = TorchEnv(dyn, n, dtype=torch.float64, seed=5)
    td = env.reset()
    gyms = [gym.make(env_id) for _ in range(n)]
    obs = []
    for i, g in enumerate(gyms):
        g.reset(seed=i)
        g.unwrapped.state = gym_state(env_id, td["state"][i].numpy())
        obs.append(obs64(env_id, td["state"][i].numpy()[None])[0])
    ended = {}
    for t in range(1, dyn.max_episode_steps + 1):
        acts = []
        for i, g in enumerate(gyms):
            kind = "controller" if i % 2 else "random"
            acts.append(_policy(env_id, kind, obs[i], rng, np.float64))
            if i in ended:
                continue
            obs[i], _, te, tr, _ = g.step(acts[i])
            if te or tr:
                ended[i] = (t, te, tr)
        a = torch.tensor(np.stack(acts))
        td["action"] = a if dyn.discrete else a.to(torch.float64)
        td = env.step(td)
        for i in range(n):
            nt, ntr = bool(td["next", "terminated"][i]), bool(td["next", "truncated"][i])
            assert bool(td["next", "done"][i]) == (nt or ntr)
            if i in ended and ended[i][0] == t:
                assert (t, nt, ntr) == ended[i]
            elif i not in ended:
                assert not (nt or ntr), (i, t)
        td = step_mdp(td)
        if len(ended) == n:
            break
    assert len(ended) == n
    kinds = {(te, tr) for _, te, tr in ended.values()}
    if env_id == "Pendulum-v1":
        assert kinds == {(False, True)}
    else:  # both ways of ending an episode are exercised
        assert kinds == {(True, False), (False, True)}
