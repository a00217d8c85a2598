"""tdppo.ppo.gae against TorchRL's functional GAE, a plain float64 Python loop and a hand-worked
case; truncation and termination in the middle of the batch; scan and loop paths; vmap."""

from __future__ import annotations

import pytest
import torch
from torchrl.objectives.value.functional import generalized_advantage_estimate

from tdppo import ppo


def _rollout(batch: tuple[int, ...], steps: int, seed: int = 0):
    """Random ``[*batch, T, 1]`` data with terminations and truncations at random times."""
    g = torch.Generator().manual_seed(seed)
    shape = (*batch, steps, 1)
    reward = torch.randn(shape, generator=g)
    value = torch.randn(shape, generator=g)
    next_value = torch.randn(shape, generator=g)
    done = torch.rand(shape, generator=g) < 0.1
    terminated = done & (torch.rand(shape, generator=g) < 0.5)
    return reward, value, next_value, terminated, done


def _python_gae(reward, value, next_value, terminated, done, gamma, lam):
    """CleanRL-style backwards loop in python floats (float64), one env at a time."""
    r, v, nv = (
        x.squeeze(-1).double().reshape(-1, x.shape[-2]).tolist()
        for x in (reward, value, next_value)
    )
    te, d = (x.squeeze(-1).reshape(-1, x.shape[-2]).tolist() for x in (terminated, done))
    adv = []
    for env in range(len(r)):
        last, row = 0.0, [0.0] * len(r[env])
        for t in reversed(range(len(r[env]))):
            bootstrap = 0.0 if te[env][t] else gamma * nv[env][t]
            delta = r[env][t] + bootstrap - v[env][t]
            last = delta + (0.0 if d[env][t] else gamma * lam * last)
            row[t] = last
        adv.append(row)
    return torch.tensor(adv, dtype=torch.float64).reshape(reward.shape)


@pytest.mark.parametrize("path", ["scan", "loop"])
@pytest.mark.parametrize("batch", [(8,), (2, 3)])
def test_gae_matches_torchrl_and_python_loop(path, batch, monkeypatch):
    if path == "loop":
        monkeypatch.setattr(ppo, "_SCAN_MAX_NUMEL", 0)
    else:
        monkeypatch.setattr(ppo, "_SCAN_MAX_NUMEL", 1 << 30)
    data = _rollout(batch, 64)
    reward, value, next_value, terminated, done = data
    assert (done & ~terminated).any() and terminated.any()  # both kinds of episode end
    adv, target = ppo.gae(*data, 0.99, 0.95)
    ref_adv, ref_target = generalized_advantage_estimate(
        0.99, 0.95, value, next_value, reward, done, terminated, time_dim=-2
    )
    assert adv.shape == target.shape == (*batch, 64, 1)
    torch.testing.assert_close(adv, ref_adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target, ref_target, rtol=1e-5, atol=1e-5)
    exact = _python_gae(*data, 0.99, 0.95)
    torch.testing.assert_close(adv.double(), exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target.double(), exact + value.double(), rtol=1e-5, atol=1e-5)


def test_gae_tensor_hyperparameters_and_float_flags():
    data = _rollout((4,), 32, seed=1)
    reward, value, next_value, terminated, done = data
    adv, _ = ppo.gae(reward, value, next_value, terminated.float(), done.float(),
                     torch.tensor(0.9), torch.tensor(0.8))  # fmt: skip
    exact = _python_gae(*data, 0.9, 0.8)
    torch.testing.assert_close(adv.double(), exact, rtol=1e-5, atol=1e-5)


def test_gae_hand_worked_truncation_and_termination():
    """One env, T=4, gamma=0.5, lam=1: step 1 truncated (bootstraps from V(s')=10), step 3
    terminated (no bootstrap), then the rollout ends (bootstrap from next_value=4)."""
    reward = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1)
    value = torch.tensor([0.5, 1.0, 1.5, 2.0]).view(1, 4, 1)
    next_value = torch.tensor([1.0, 10.0, 2.0, 4.0]).view(1, 4, 1)
    done = torch.tensor([False, True, False, True]).view(1, 4, 1)
    terminated = torch.tensor([False, False, False, True]).view(1, 4, 1)
    adv, target = ppo.gae(reward, value, next_value, terminated, done, 0.5, 1.0)
    # t=3: 4 - 2 = 2 (terminated: no bootstrap, nothing after)
    # t=2: 3 + 0.5*2 - 1.5 = 2.5, plus 0.5 * A_3 = 3.5
    # t=1: 2 + 0.5*10 - 1 = 6 (truncated: bootstrap, cut)
    # t=0: 1 + 0.5*1 - 0.5 = 1, plus 0.5 * 6 = 4
    expected = torch.tensor([4.0, 6.0, 3.5, 2.0]).view(1, 4, 1)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(target, expected + value)


def test_gae_under_vmap_equals_batched_call():
    data = _rollout((3, 5), 16, seed=2)
    batched, _ = ppo.gae(*data, 0.99, 0.95)
    mapped, _ = torch.vmap(lambda *x: ppo.gae(*x, 0.99, 0.95))(*data)
    torch.testing.assert_close(mapped, batched, rtol=1e-6, atol=1e-6)
