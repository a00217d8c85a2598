"""tdppo.ppo.ppo_loss against TorchRL's ClipPPOLoss (values and gradients) and against CleanRL's
formulas in numpy float64 for the diagnostics ClipPPOLoss computes differently.

Mapping (see tdppo.ppo's docstring): clip_epsilon=clip_eps, entropy_coeff=ent_coef,
critic_coeff=0.5 * vf_coef (TorchRL's "l2" has no 1/2), loss_critic_type="l2",
clip_value=clip_vloss, normalize_advantage=norm_adv.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical
from torchrl.objectives import ClipPPOLoss

from tdppo import nets, ppo

OBS, M = 5, 64
CLIP, VF, ENT = 0.2, 0.7, 0.01


def _setup(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    spec = Categorical(4) if kind == "discrete" else Bounded(-1.0, 1.0, shape=(2,))
    actor, critic = nets.make_actor(OBS, spec), nets.make_critic(OBS)
    with torch.no_grad():  # move away from the near-uniform init so ratios get clipped
        for p in [*actor.parameters(), *critic.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    obs = torch.randn(M, OBS)
    with torch.no_grad():
        batch = actor(TensorDict(observation=obs, batch_size=[M]))
    batch = batch.select("observation", "action", "sample_log_prob")
    batch["sample_log_prob"] = batch["sample_log_prob"] + 0.3 * torch.randn(M)  # stale policy
    batch["advantage"] = 2.0 * torch.randn(M, 1) + 0.5
    batch["value_target"] = torch.randn(M, 1)
    batch["state_value"] = torch.randn(M, 1)
    params = TensorDict(
        policy=TensorDict.from_module(actor), value=TensorDict.from_module(critic)
    ).detach()
    hp = TensorDict(
        clip_eps=torch.tensor(CLIP), vf_coef=torch.tensor(VF), ent_coef=torch.tensor(ENT)
    )
    return actor, critic, params, batch, hp


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
@pytest.mark.parametrize("clip_vloss", [True, False])
@pytest.mark.parametrize("norm_adv", [True, False])
def test_ppo_loss_matches_clip_ppo_loss(kind, clip_vloss, norm_adv):
    actor, critic, params, batch, hp = _setup(kind)
    ref = ClipPPOLoss(
        actor,
        critic,
        clip_epsilon=CLIP,
        entropy_coeff=ENT,
        critic_coeff=0.5 * VF,
        loss_critic_type="l2",
        clip_value=clip_vloss,
        normalize_advantage=norm_adv,
    )
    out = ref(batch.clone())
    ref_total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
    ref_total.backward()

    loss, metrics = ppo.ppo_loss(actor, critic, params, batch, hp, clip_vloss, norm_adv)
    assert 0.0 < float(metrics["clip_fraction"]) < 1.0  # the clipped branch is exercised
    torch.testing.assert_close(metrics["loss_policy"], out["loss_objective"], rtol=0, atol=1e-6)
    torch.testing.assert_close(VF * metrics["loss_value"], out["loss_critic"], rtol=0, atol=1e-6)
    torch.testing.assert_close(-ENT * metrics["entropy"], out["loss_entropy"], rtol=0, atol=1e-6)
    torch.testing.assert_close(metrics["entropy"], out["entropy"], rtol=0, atol=1e-6)
    torch.testing.assert_close(metrics["clip_fraction"], out["clip_fraction"], rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, ref_total.detach(), rtol=0, atol=1e-6)

    grads, _ = torch.func.grad(
        lambda p: ppo.ppo_loss(actor, critic, p, batch, hp, clip_vloss, norm_adv), has_aux=True
    )(params)
    for tree, module in (("policy", actor), ("value", critic)):
        ref_grads = TensorDict.from_module(module).apply(lambda p: p.grad)
        for key, g in ref_grads.items(True, True):
            torch.testing.assert_close(grads[tree][key], g, rtol=1e-5, atol=1e-6)


def test_diagnostics_match_cleanrl_formulas_in_float64():
    """approx_kl is CleanRL's ((r - 1) - log r).mean() (ClipPPOLoss's kl_approx is the plain
    -log r mean); the whole loss is recomputed from the new log-probs and values in numpy."""
    actor, critic, params, batch, hp = _setup("continuous", seed=1)
    loss, metrics = ppo.ppo_loss(actor, critic, params, batch, hp)
    with torch.no_grad():
        td = TensorDict(observation=batch["observation"], batch_size=[M])
        dist = actor.get_dist(td)
        new_lp = dist.log_prob(batch["action"]).double().numpy()
        ent = dist.entropy().double().numpy()
        new_v = critic(td)["state_value"].double().numpy()
    old_lp = batch["sample_log_prob"].double().numpy()
    logratio = new_lp - old_lp
    ratio = np.exp(logratio)
    adv = batch["advantage"].double().numpy().reshape(-1)
    adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
    pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - CLIP, 1 + CLIP)).mean()
    target, old_v = batch["value_target"].double().numpy(), batch["state_value"].double().numpy()
    v_clipped = old_v + np.clip(new_v - old_v, -CLIP, CLIP)
    v_loss = 0.5 * np.maximum((new_v - target) ** 2, (v_clipped - target) ** 2).mean()
    expected = {
        "loss_policy": pg,
        "loss_value": v_loss,
        "entropy": ent.mean(),
        "approx_kl": ((ratio - 1) - logratio).mean(),
        "clip_fraction": (np.abs(ratio - 1) > CLIP).mean(),
    }
    for key, value in expected.items():
        assert metrics[key].dtype == torch.float32 and metrics[key].shape == ()
        assert abs(float(metrics[key]) - value) < 1e-5, (key, float(metrics[key]), value)
    assert abs(float(loss) - (pg - ENT * ent.mean() + VF * v_loss)) < 1e-5


def test_loss_hyperparameters_are_tensors_not_constants():
    """A different clip_eps tensor changes the loss (nothing was baked in at first call)."""
    actor, critic, params, batch, hp = _setup("continuous", seed=2)
    base, m0 = ppo.ppo_loss(actor, critic, params, batch, hp)
    wider = hp.clone()
    wider["clip_eps"] = torch.tensor(0.5)
    other, m1 = ppo.ppo_loss(actor, critic, params, batch, wider)
    assert float(m1["clip_fraction"]) < float(m0["clip_fraction"])
    assert not torch.equal(base, other)
