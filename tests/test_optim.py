"""Functional Adam (tdppo.optim) against torch.optim.Adam and torch.nn.utils.clip_grad_norm_."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from tdppo import optim


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)
    )


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(32, 4, generator=g), torch.randn(32, 2, generator=g)


def _loss(net: nn.Module, params, step: int) -> torch.Tensor:
    x, y = _data(step)
    out = torch.func.functional_call(net, dict(params.flatten_keys(".").items()), (x,))
    return ((out - y) ** 2).mean() * 10.0  # large enough grads for clipping to act


@pytest.mark.parametrize("max_norm", [None, 0.5])
@pytest.mark.parametrize("schedule", [False, True])
def test_adam_matches_torch_optim_adam_100_steps(max_norm, schedule):
    """Reference: torch.optim.Adam (+ clip_grad_norm_) on a twin network, same losses."""
    ref_net, net = _net(0), _net(0)
    ref_opt = torch.optim.Adam(ref_net.parameters(), lr=2.0**-7, eps=1e-5)
    params = TensorDict.from_module(net).detach().clone()
    state = optim.adam_init(params)
    grad_fn = torch.func.grad(lambda p, s: _loss(net, p, s))
    clipped_once = False
    for step in range(100):
        # dyadic rates: the same number as a python float (torch) and a float32 tensor (tdppo)
        lr = 2.0**-7 * (1.0 - step / 128) if schedule else 2.0**-7
        for group in ref_opt.param_groups:
            group["lr"] = lr
        ref_opt.zero_grad()
        x, y = _data(step)
        ((ref_net(x) - y) ** 2).mean().mul(10.0).backward()
        if max_norm is not None:
            ref_norm = nn.utils.clip_grad_norm_(ref_net.parameters(), max_norm)
            clipped_once |= bool(ref_norm > max_norm)
        ref_opt.step()

        grads = grad_fn(params, step)
        params, state, norm = optim.adam_update(
            grads, state, params, torch.tensor(lr), eps=1e-5, max_grad_norm=max_norm
        )
        if max_norm is not None:
            torch.testing.assert_close(norm, ref_norm, rtol=1e-5, atol=1e-6)

    assert max_norm is None or clipped_once
    ref_params = TensorDict.from_module(ref_net)
    for key, ref in ref_params.items(True, True):
        torch.testing.assert_close(params[key], ref.detach(), rtol=0, atol=1e-7)
        torch.testing.assert_close(
            state["exp_avg", key], ref_opt.state[ref]["exp_avg"], rtol=0, atol=1e-7
        )
        torch.testing.assert_close(
            state["exp_avg_sq", key], ref_opt.state[ref]["exp_avg_sq"], rtol=1e-6, atol=1e-9
        )
        assert int(state["step"]) == int(ref_opt.state[ref]["step"]) == 100


def test_adam_init_layout_and_dict_trees():
    params = TensorDict(a=torch.ones(2, 3), b=TensorDict(c=torch.ones(4)))
    state = optim.adam_init(params)
    assert set(state.keys()) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["step"].dtype == torch.int64 and state["step"].shape == ()
    assert state["exp_avg", "b", "c"].shape == (4,)
    assert (state["exp_avg_sq", "a"] == 0).all()
    # The same update on a nested dict gives the same numbers, in dicts.
    grads = TensorDict(a=torch.full((2, 3), 0.5), b=TensorDict(c=torch.arange(4.0)))
    p_td, s_td, n_td = optim.adam_update(grads, state, params, 0.1, max_grad_norm=1.0)
    p_d, s_d, n_d = optim.adam_update(
        grads.to_dict(), optim.adam_init(params.to_dict()), params.to_dict(), 0.1, max_grad_norm=1.0
    )
    assert isinstance(p_d, dict) and isinstance(s_d["exp_avg"], dict)
    assert isinstance(p_td, TensorDict) and isinstance(s_td, TensorDict)
    torch.testing.assert_close(p_d["b"]["c"], p_td["b", "c"], rtol=0, atol=0)
    torch.testing.assert_close(n_d, n_td)
    assert (params["a"] == 1).all()  # inputs untouched
    # Extra optimizer-state entries (an lr schedule, say) pass through.
    state["lr"] = torch.tensor(0.1)
    _, s_extra, _ = optim.adam_update(grads, state, params, state["lr"])
    assert s_extra["lr"] is state["lr"] and int(s_extra["step"]) == 1
    assert int(state["step"]) == 0


def test_clip_by_global_norm_matches_clip_grad_norm_():
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    for max_norm in (0.1, 100.0):
        params = [torch.zeros_like(t, requires_grad=True) for t in grads]
        for p, t in zip(params, grads):
            p.grad = t.clone()
        ref_norm = nn.utils.clip_grad_norm_(params, max_norm)
        clipped, norm = optim.clip_by_global_norm(TensorDict(a=grads[0], b=grads[1]), max_norm)
        torch.testing.assert_close(norm, ref_norm)
        torch.testing.assert_close(clipped["a"], params[0].grad, rtol=0, atol=1e-7)
        torch.testing.assert_close(clipped["b"], params[1].grad, rtol=0, atol=1e-7)


def test_adam_update_vmaps_over_members():
    """Stacked states under torch.vmap equal member-by-member calls."""
    g = torch.Generator().manual_seed(5)
    members = [TensorDict(w=torch.randn(3, 2, generator=g)) for _ in range(2)]
    grads = [TensorDict(w=torch.randn(3, 2, generator=g)) for _ in range(2)]
    states = [optim.adam_init(p) for p in members]
    lrs = torch.tensor([0.1, 0.01])
    fn = lambda gr, st, p, lr: optim.adam_update(gr, st, p, lr, max_grad_norm=torch.tensor(1.0))
    out = torch.vmap(fn)(torch.stack(grads), torch.stack(states), torch.stack(members), lrs)
    for i in range(2):
        p, s, n = fn(grads[i], states[i], members[i], lrs[i])
        torch.testing.assert_close(out[0][i]["w"], p["w"], rtol=0, atol=1e-7)
        torch.testing.assert_close(out[1][i]["exp_avg_sq", "w"], s["exp_avg_sq", "w"])
        torch.testing.assert_close(out[2][i], n)
