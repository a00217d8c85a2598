"""tdppo.ppo.make_update: the epochs x minibatches update against an independent reference
(TorchRL's ClipPPOLoss + torch.optim.Adam + clip_grad_norm_ over the same shuffles), vmapped
members against separate calls, and compiled against eager (same numbers, no recompilation)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded
from torchrl.objectives import ClipPPOLoss

from tdppo import jit, nets, optim, ppo
from tdppo import random as tr

OBS, B = 4, 64
LR = 2.0**-9  # dyadic: the same number as a python float and a float32 tensor


def _modules(seed: int = 0):
    torch.manual_seed(seed)
    return nets.make_actor(OBS, Bounded(-1.0, 1.0, shape=(2,))), nets.make_critic(OBS)


def _params(actor, critic) -> TensorDict:
    return (
        TensorDict(policy=TensorDict.from_module(actor), value=TensorDict.from_module(critic))
        .detach()
        .clone()
    )


def _batch(actor, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, OBS, generator=g)
    with torch.no_grad():
        td = actor(TensorDict(observation=obs, batch_size=[B]))
    td = td.select("observation", "action", "sample_log_prob")
    td["action"] = td["action"] + 0.3 * torch.randn(B, 2, generator=g)  # off the mean
    td["sample_log_prob"] = td["sample_log_prob"] + 0.2 * torch.randn(B, generator=g)
    td["advantage"] = torch.randn(B, 1, generator=g) + 0.3
    td["value_target"] = torch.randn(B, 1, generator=g)
    td["state_value"] = td["value_target"] + 0.5 * torch.randn(B, 1, generator=g)
    td["ignored"] = torch.zeros(B, 3)  # extra keys are fine
    return td


def _hp(lr: float = LR) -> TensorDict:
    return TensorDict(
        clip_eps=torch.tensor(0.2),
        vf_coef=torch.tensor(0.5),
        ent_coef=torch.tensor(0.01),
        lr=torch.tensor(lr),
        max_grad_norm=torch.tensor(0.5),
        adam_eps=torch.tensor(1e-5),
    )


def _assert_trees_close(a, b, atol):
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key, value in a.items(True, True):
        msg = lambda m, k=key: f"{k}: {m}"
        torch.testing.assert_close(value, b[key], rtol=0, atol=atol, msg=msg)


def test_update_matches_clip_ppo_loss_with_torch_adam():
    epochs, minibatches = 2, 4
    actor, critic = _modules()
    params, batch, key = _params(actor, critic), _batch(actor), tr.key(7)
    opt_state = optim.adam_init(params)
    update = ppo.make_update(actor, critic, epochs=epochs, minibatches=minibatches, compile=False)
    new_params, new_opt, metrics = update(params, opt_state, batch, key, _hp())

    # Reference: TorchRL's loss, torch's optimizer and clipping, the same shuffles.
    ref = ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=0.01, critic_coeff=0.25,
                      loss_critic_type="l2", clip_value=True, normalize_advantage=True)  # fmt: skip
    adam = torch.optim.Adam(ref.parameters(), lr=LR, eps=1e-5)
    size = B // minibatches
    logs = []
    for epoch in range(epochs):
        perm = tr.permutation(tr.fold_in(key, epoch), B)
        for i in range(minibatches):
            out = ref(batch[perm[i * size : (i + 1) * size]])
            loss = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
            adam.zero_grad()
            loss.backward()
            norm = nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
            adam.step()
            logs.append((out.detach(), norm))

    expected = TensorDict(
        policy=TensorDict.from_module(actor), value=TensorDict.from_module(critic)
    ).detach()
    assert any(float(n) > 0.5 for _, n in logs)  # clipping was active
    _assert_trees_close(new_params, expected, atol=1e-6)
    assert int(new_opt["step"]) == epochs * minibatches
    mean = lambda f: torch.stack([f(o, n) for o, n in logs]).mean()
    torch.testing.assert_close(metrics["loss_policy"], mean(lambda o, n: o["loss_objective"]))
    torch.testing.assert_close(metrics["loss_value"], mean(lambda o, n: 2 * o["loss_critic"]))
    torch.testing.assert_close(metrics["entropy"], mean(lambda o, n: o["entropy"]))
    torch.testing.assert_close(metrics["clip_fraction"], mean(lambda o, n: o["clip_fraction"]))
    torch.testing.assert_close(metrics["grad_norm"], mean(lambda o, n: n))
    assert set(metrics.keys()) == set(ppo.METRICS)
    assert metrics["approx_kl"].shape == ()


def test_update_is_pure_and_keyed():
    actor, critic = _modules()
    params, batch = _params(actor, critic), _batch(actor)
    opt_state = optim.adam_init(params)
    before = (params.clone(), opt_state.clone(), batch.clone())
    update = ppo.make_update(actor, critic, epochs=1, minibatches=2, compile=False)
    p1, o1, _ = update(params, opt_state, batch, tr.key(0), _hp())
    p2, _, _ = update(params, opt_state, batch, tr.key(0), _hp())
    p3, _, _ = update(params, opt_state, batch, tr.key(1), _hp())
    for tree, old in zip((params, opt_state, batch), before):
        assert (tree == old).all()
    assert isinstance(p1, TensorDict) and isinstance(o1, TensorDict)
    _assert_trees_close(p1, p2, atol=0)
    assert not (p1 == p3).all()  # another key, other minibatches
    with pytest.raises(ValueError, match="minibatches"):
        ppo.make_update(actor, critic, epochs=1, minibatches=3, compile=False)(
            params, opt_state, batch, tr.key(0), _hp()
        )


def test_minibatch_step_vmaps_over_two_members():
    """Stacked params / optimizer states / hyperparameters under torch.vmap give what two
    separate calls give."""
    actor, critic = _modules(0)
    members = [_params(*_modules(seed)) for seed in (0, 1)]
    states = [optim.adam_init(p) for p in members]
    hps = [_hp(LR), _hp(4 * LR)]
    minibatch = _batch(actor)[:32]
    step = ppo.make_minibatch_step(actor, critic)
    stacked = torch.vmap(step, in_dims=(0, 0, None, 0))(
        torch.stack(members), torch.stack(states), minibatch, torch.stack(hps)
    )
    for i in range(2):
        params, state, metrics = step(members[i], states[i], minibatch, hps[i])
        _assert_trees_close(stacked[0][i], params, atol=1e-6)
        _assert_trees_close(stacked[1][i], state, atol=1e-6)
        for name in ppo.METRICS:
            torch.testing.assert_close(stacked[2][name][i], metrics[name], rtol=1e-5, atol=1e-6)


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("compiler", ["aot", "dynamo"])
def test_compiled_update_equals_eager_without_recompiling(compiler, monkeypatch):
    """Both ways ``tdppo.jit.compiled`` compiles on the CPU (``$TDPPO_COMPILER``) give the eager
    update, and compile one minibatch-step graph, reused for every step and every call."""
    monkeypatch.setenv(jit.COMPILER_ENV, compiler)
    actor, critic = _modules()
    params, batch = _params(actor, critic), _batch(actor)
    opt_state = optim.adam_init(params)
    kwargs = dict(epochs=2, minibatches=2)
    eager = ppo.make_update(actor, critic, compile=False, **kwargs)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    # in-process compilation: no worker pool to start on a 2-core box
    with torch._inductor.config.patch(compile_threads=1):
        compiled = ppo.make_update(actor, critic, compile=True, **kwargs)
        assert isinstance(compiled.minibatch_step, jit.Aot) == (compiler == "aot")
        p_c, o_c, m_c = compiled(params, opt_state, batch, tr.key(0), _hp())
        with torch._dynamo.config.patch(error_on_recompile=True):
            # Second call from the updated state, with another learning-rate value.
            p_c2, o_c2, m_c2 = compiled(p_c, o_c, batch, tr.key(1), _hp(2 * LR))
    if compiler == "aot":
        assert len(compiled.minibatch_step._variants) == 1  # one graph, reused 8 times
        assert jit.captured(compiled.minibatch_step)
    else:
        assert counters["stats"]["unique_graphs"] == 1  # one minibatch-step graph, reused 8 times
    p_e, o_e, m_e = eager(params, opt_state, batch, tr.key(0), _hp())
    p_e2, o_e2, m_e2 = eager(p_e, o_e, batch, tr.key(1), _hp(2 * LR))
    for got, exp in ((p_c, p_e), (o_c, o_e), (m_c, m_e), (p_c2, p_e2), (o_c2, o_e2), (m_c2, m_e2)):
        _assert_trees_close(got, exp, atol=1e-6)
    assert not (p_c2 == p_c).all()
