"""TorchEnv as a TorchRL env: specs, reset distribution, partial resets, exact resume.

References: TorchRL's own ``check_env_specs`` and ``step_and_maybe_reset``; the uniform
distribution's mean and standard deviation; gymnasium's reset ranges; the reset rule stated in
the design (env ``i`` starting episode ``k`` draws ``uniform(fold_in(fold_in(key, i), k))``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from tdppo import random as trand
from tdppo.envs import DYNAMICS, TorchEnv, autoreset_step, reset_uniforms

ENV_IDS = list(DYNAMICS)
DTYPES = [torch.float32, torch.float64]

# gymnasium 1.4 reset ranges (low, high) per state component; None: fixed at 0
RESET_RANGES = {
    "Pendulum-v1": [(-math.pi, math.pi), (-1.0, 1.0)],
    "CartPole-v1": [(-0.05, 0.05)] * 4,
    "Acrobot-v1": [(-0.1, 0.1)] * 4,
    "MountainCarContinuous-v0": [(-0.6, -0.4), None],
}


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("num_envs", [1, 7, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_check_env_specs(env_id, num_envs, dtype):
    env = TorchEnv(DYNAMICS[env_id], num_envs, dtype=dtype, seed=0)
    check_env_specs(env, seed=1)
    td = env.rollout(3, break_when_any_done=False)
    assert td.batch_size == (num_envs, 3)
    assert td["next", "observation"].dtype == dtype
    assert td["next", "reward"].shape == (num_envs, 3, 1)
    assert env.observation_spec["observation"].is_in(td["next", "observation"][:, -1])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_distribution(env_id):
    """100k resets lie in gymnasium's ranges; per-component mean and std match the uniform
    distribution's within 5 standard errors; components are uncorrelated."""
    n = 100_000
    env = TorchEnv(DYNAMICS[env_id], n, dtype=torch.float64, seed=123)
    s = env.reset()["state"]
    again = env.reset()  # a fresh reset() starts the next episode of every env
    assert (again["episode"] == 1).all() and not (again["state"] == s).all(-1).any()
    used = []
    for j, rng in enumerate(RESET_RANGES[env_id]):
        x = s[:, j]
        if rng is None:
            assert (x == 0).all()
            continue
        lo, hi = rng
        tol = 1e-7 if env_id == "Acrobot-v1" else 0.0  # gymnasium rounds Acrobot to float32
        assert x.min() >= lo - tol and x.max() <= hi + tol
        mean, std = (lo + hi) / 2, (hi - lo) / math.sqrt(12)
        se_mean = std / math.sqrt(n)
        se_std = std / math.sqrt(n) * math.sqrt(0.2)  # (kurtosis - 1) / 4 = 0.2 for a uniform
        assert abs(x.mean().item() - mean) < 5 * se_mean
        assert abs(x.std().item() - std) < 5 * se_std
        used.append(j)
    if len(used) > 1:
        c = torch.corrcoef(s[:, used].T)
        off = c - torch.eye(len(used), dtype=c.dtype)
        assert off.abs().max() < 5 / math.sqrt(n)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_reset_follows_the_counter_rule(dtype):
    """Fresh reset: episode 0; masked reset: episode + 1 for the masked rows only, drawn as the
    design states; the other rows keep state, step_count and episode bit for bit."""
    dyn, n = DYNAMICS["CartPole-v1"], 6
    env = TorchEnv(dyn, n, dtype=dtype, seed=42)
    key = trand.key(42)
    assert torch.equal(env.rng_key, key)
    td = env.reset()
    idx = torch.arange(n)
    assert (td["episode"] == 0).all() and (td["step_count"] == 0).all()
    want = dyn.initial_state(trand.uniform(trand.fold_in(trand.fold_in(key, idx), 0), (4,), dtype))
    assert torch.equal(td["state"], want)
    for _ in range(3):
        td["action"] = torch.ones(n, dtype=torch.int64)
        td = env.step(td)["next"].clone()
    td["episode"] = torch.tensor([[3], [0], [5], [1], [0], [2]])
    mask = torch.tensor([True, False, True, False, False, True])
    td["_reset"] = mask.unsqueeze(-1)
    before = td.clone()
    out = env.reset(td)
    assert torch.equal(out["episode"].squeeze(-1), before["episode"].squeeze(-1) + mask.long())
    keep = ~mask
    for k in ("state", "step_count", "observation"):
        assert torch.equal(out[k][keep], before[k][keep])
    assert (out["step_count"][mask] == 0).all()
    k = before["episode"].squeeze(-1) + 1
    want = dyn.initial_state(trand.uniform(trand.fold_in(trand.fold_in(key, idx), k), (4,), dtype))
    assert torch.equal(out["state"][mask], want[mask])
    assert not out["done"].any()
    assert torch.equal(
        reset_uniforms(key, idx, k, 4, dtype),
        trand.uniform(trand.fold_in(trand.fold_in(key, idx), k), (4,), dtype),
    )


def test_setting_state_sets_the_env():
    dyn = DYNAMICS["Pendulum-v1"]
    env = TorchEnv(dyn, 2, dtype=torch.float64, seed=0)
    td = env.reset()
    td["state"] = torch.tensor([[0.5, -0.25], [-3.0, 7.5]], dtype=torch.float64)
    td["action"] = torch.tensor([[1.0], [-3.0]], dtype=torch.float64)
    nxt = env.step(td)["next"]
    th = torch.tensor([0.5, -3.0], dtype=torch.float64)
    thdot = torch.tensor([-0.25, 7.5], dtype=torch.float64)
    u = torch.tensor([1.0, -2.0], dtype=torch.float64)  # clipped to the action box
    newthdot = (thdot + (15.0 * torch.sin(th) + 3.0 * u) * 0.05).clamp(-8, 8)
    torch.testing.assert_close(nxt["state"][:, 1], newthdot, rtol=0, atol=1e-15)
    assert (nxt["step_count"] == 1).all()


def _rollout(env, td, actions):
    """``step_and_maybe_reset`` over precomputed actions; the stacked transitions."""
    out = []
    for a in actions:
        td["action"] = a
        data, td = env.step_and_maybe_reset(td)
        out.append(data.clone())
    return torch.stack(out, 1), td


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MountainCarContinuous-v0"])
def test_save_restore_is_bit_identical(env_id):
    """Save the TensorDict (state, counters) and the key, step k times with partial resets,
    restore into a fresh env built with another seed, step k times again: same bits."""
    dyn, n, k = DYNAMICS[env_id], 16, 60
    env = TorchEnv(dyn, n, seed=3)
    gen = torch.Generator().manual_seed(0)
    if dyn.discrete:
        acts = torch.randint(0, dyn.n_actions, (40 + k, n), generator=gen)
    else:
        acts = torch.rand((40 + k, n, 1), generator=gen) * 2 - 1
    if env_id == "MountainCarContinuous-v0":  # short episodes: truncate at the 7th step
        dyn = type(dyn)()
        dyn.max_episode_steps = 7
        env = TorchEnv(dyn, n, seed=3)
    _, td = _rollout(env, env.reset(), acts[:40])
    saved_td, saved_key = td.clone(), env.rng_key.clone()
    first, end1 = _rollout(env, td, acts[40:])
    done = first["next", "done"]
    assert done.any() and not done.all(dim=0).all()  # partial resets happened

    env2 = TorchEnv(dyn, n, seed=999)
    env2.rng_key.copy_(saved_key)
    second, end2 = _rollout(env2, saved_td.clone(), acts[40:])
    assert (first == second).all()
    assert (end1 == end2).all()
    # the resets after the save point drew fresh episodes
    assert (end1["episode"] > saved_td["episode"]).any()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_autoreset_step_matches_step_and_maybe_reset(env_id):
    """The pure autoreset step (what fused collection runs) and TorchRL's
    ``step_and_maybe_reset`` on TorchEnv agree bit for bit, partial resets included."""
    dyn = type(DYNAMICS[env_id])()
    dyn.max_episode_steps = 5  # many resets
    n = 8
    env = TorchEnv(dyn, n, seed=17)
    td = env.reset()
    key = env.rng_key.clone()
    state, count = td["state"].clone(), td["step_count"].squeeze(-1).clone()
    episode = td["episode"].squeeze(-1).clone()
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        if dyn.discrete:
            a = torch.randint(0, dyn.n_actions, (n,), generator=gen)
        else:
            a = torch.rand((n, 1), generator=gen) * 2 - 1
        td["action"] = a
        data, td = env.step_and_maybe_reset(td)
        out = autoreset_step(dyn, key, state, count, episode, a)
        assert torch.equal(out.next_observation, data["next", "observation"])
        assert torch.equal(out.reward, data["next", "reward"].squeeze(-1))
        assert torch.equal(out.terminated, data["next", "terminated"].squeeze(-1))
        assert torch.equal(out.truncated, data["next", "truncated"].squeeze(-1))
        assert torch.equal(out.state, td["state"])
        assert torch.equal(out.observation, td["observation"])
        assert torch.equal(out.step_count, td["step_count"].squeeze(-1))
        assert torch.equal(out.episode, td["episode"].squeeze(-1))
        state, count, episode = out.state, out.step_count, out.episode
    assert (episode >= 2).all()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_dynamics_batch_any_leading_dims_and_vmap(env_id):
    """The dynamics are pure functions of the rows: a [3, 5] batch, a flat [15] batch and
    ``torch.vmap`` over the leading dim give the same values."""
    dyn = DYNAMICS[env_id]
    u = trand.uniform(trand.key(5), (3, 5, dyn.state_dim), torch.float64)
    state = dyn.initial_state(u)
    if dyn.discrete:
        a = torch.arange(15).view(3, 5) % dyn.n_actions
    else:
        a = trand.uniform(trand.key(6), (3, 5, 1), torch.float64) * 2 - 1
    ns, r, t = dyn.step(state, a)
    assert ns.shape == (3, 5, dyn.state_dim) and r.shape == (3, 5) and t.shape == (3, 5)
    fs, fr, ft = dyn.step(state.reshape(15, -1), a.reshape(15, *a.shape[2:]))
    torch.testing.assert_close(fs.view(3, 5, -1), ns, rtol=0, atol=1e-15)
    torch.testing.assert_close(fr.view(3, 5), r, rtol=0, atol=1e-15)
    assert torch.equal(ft.view(3, 5), t)
    vs, vr, vt = torch.vmap(dyn.step)(state, a)
    torch.testing.assert_close(vs, ns, rtol=0, atol=1e-15)
    torch.testing.assert_close(vr, r, rtol=0, atol=1e-15)
    assert torch.equal(vt, t)
    assert dyn.observe(ns).shape == (3, 5, dyn.obs_dim)


def test_constructor_errors():
    dyn = DYNAMICS["CartPole-v1"]
    for bad in (0, -3, 2.0, True, "4"):
        with pytest.raises(ValueError, match="num_envs"):
            TorchEnv(dyn, bad)
    with pytest.raises(ValueError, match="dtype"):
        TorchEnv(dyn, 2, dtype=torch.float16)
