"""Actor / critic construction and the pure helpers of tdppo.nets, checked against the TorchRL
modules' own distributions and against sample statistics."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, set_interaction_type
from torchrl.data import Bounded, Categorical, OneHot

from tdppo import nets
from tdppo import random as tr

OBS = 5


def _spec(kind: str):
    return Categorical(4) if kind == "discrete" else Bounded(-1.0, 1.0, shape=(3,))


def _perturbed_actor(kind: str, seed: int = 0):
    """An actor with non-trivial outputs (the 0.01 head init makes everything ~uniform)."""
    torch.manual_seed(seed)
    actor = nets.make_actor(OBS, _spec(kind), init_log_std=-0.5)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return actor


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_actor_keys_shapes_and_log_prob_key(kind):
    actor = nets.make_actor(OBS, _spec(kind))
    td = actor(TensorDict(observation=torch.randn(7, OBS), batch_size=[7]))
    assert nets.LOG_PROB_KEY == "sample_log_prob"
    assert actor.log_prob_keys == ["sample_log_prob"]
    assert td["sample_log_prob"].shape == (7,)
    if kind == "continuous":
        assert td["action"].shape == (7, 3) and td["action"].dtype == torch.float32
        assert td["loc"].shape == td["scale"].shape == (7, 3)
    else:
        assert td["action"].shape == (7,) and td["action"].dtype == torch.int64
        assert td["logits"].shape == (7, 4)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_log_prob_entropy_mode_match_the_actors_distribution(kind):
    """Reference: the ProbabilisticActor's own torch distribution (IndependentNormal or
    Categorical) and its deterministic action."""
    actor = _perturbed_actor(kind)
    params = TensorDict.from_module(actor).detach()
    obs = torch.randn(64, OBS)
    td = TensorDict(observation=obs, batch_size=[64])
    with set_interaction_type(InteractionType.RANDOM):
        td = actor(td)
    dist = actor.get_dist(td)
    dp = nets.dist_params(actor, params, obs)
    assert dp.batch_size == (64,)
    for key in dp.keys():
        torch.testing.assert_close(dp[key], td[key], rtol=0, atol=0)
    torch.testing.assert_close(nets.log_prob(dp, td["action"]), dist.log_prob(td["action"]))
    torch.testing.assert_close(nets.log_prob(dp, td["action"]), td["sample_log_prob"])
    torch.testing.assert_close(nets.entropy(dp), dist.entropy())
    with set_interaction_type(InteractionType.DETERMINISTIC):
        deterministic = actor(TensorDict(observation=obs, batch_size=[64]))["action"]
    torch.testing.assert_close(nets.mode(dp), deterministic)


def test_gaussian_samples_have_loc_and_scale():
    dp = {"loc": torch.tensor([[-1.0, 0.0, 2.0]]), "scale": torch.tensor([[0.5, 1.0, 2.0]])}
    dp = {k: v.expand(20000, 3) for k, v in dp.items()}
    action = nets.sample(dp, tr.key(1))
    assert action.shape == (20000, 3)
    # standard error of the mean is scale / sqrt(n) <= 0.014: 5 sigma bounds
    torch.testing.assert_close(action.mean(0), dp["loc"][0], rtol=0, atol=0.075)
    torch.testing.assert_close(action.std(0), dp["scale"][0], rtol=0.03, atol=0)
    # The log-prob of its own samples averages to minus the entropy.
    torch.testing.assert_close(
        nets.log_prob(dp, action).mean(), -nets.entropy(dp).mean(), rtol=0, atol=0.03
    )


def test_categorical_samples_follow_softmax_frequencies():
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0])
    n = 40000
    dp = {"logits": logits.expand(n, 4)}
    action = nets.sample(dp, tr.key(2))
    assert action.shape == (n,) and action.dtype == torch.int64
    freq = torch.bincount(action, minlength=4).double() / n
    probs = torch.softmax(logits.double(), -1)
    # 5 standard errors of a binomial proportion
    assert ((freq - probs).abs() < 5 * torch.sqrt(probs * (1 - probs) / n)).all(), (freq, probs)


def test_sample_is_a_pure_function_of_the_key():
    actor = _perturbed_actor("continuous")
    dp = nets.dist_params(actor, TensorDict.from_module(actor).detach(), torch.randn(6, OBS))
    a1, a2 = nets.sample(dp, tr.key(3)), nets.sample(dp, tr.key(3))
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, nets.sample(dp, tr.key(4)))


def test_orthogonal_init_and_log_std():
    actor = nets.make_actor(OBS, _spec("continuous"), hidden=(32, 16), init_log_std=-0.7)
    critic = nets.make_critic(OBS, hidden=(32, 16))
    linears = [m for m in actor.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(32, OBS), (16, 32), (3, 16)]
    for m, gain in zip(linears, (math.sqrt(2), math.sqrt(2), 0.01)):
        w = m.weight.detach().double()
        # orthogonal rows (fewer rows than columns) or columns, scaled by the gain
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0], dtype=torch.float64),
                                   rtol=0, atol=1e-5 * gain**2)  # fmt: skip
        assert (m.bias == 0).all()
    params = TensorDict.from_module(actor)
    log_std = [v for k, v in params.items(True, True) if k[-1] == "state_independent_scale"]
    assert len(log_std) == 1 and torch.equal(log_std[0].detach(), torch.full((3,), -0.7))
    head = [m for m in critic.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.testing.assert_close(head.weight.norm(), torch.tensor(1.0))  # one row, gain 1


def test_activation_choice_and_unknown_activation():
    actor = nets.make_actor(OBS, _spec("discrete"), activation="relu")
    assert any(isinstance(m, torch.nn.ReLU) for m in actor.modules())
    with pytest.raises(ValueError, match="activation"):
        nets.make_critic(OBS, activation="nope")
    with pytest.raises(TypeError, match="OneHot"):
        nets.make_actor(OBS, OneHot(4))


def test_value_matches_critic_module_and_leaves_inputs_untouched():
    torch.manual_seed(0)
    critic = nets.make_critic(OBS)
    params = TensorDict.from_module(critic).detach().clone()
    other = params.apply(lambda p: p + 0.1)
    before = other.clone()
    obs = torch.randn(9, OBS)
    expected = critic(TensorDict(observation=obs, batch_size=[9]))["state_value"]
    torch.testing.assert_close(nets.value(critic, params, obs), expected, rtol=0, atol=0)
    shifted = nets.value(critic, other, obs)
    assert shifted.shape == (9, 1) and not torch.allclose(shifted, expected)
    # The module keeps its own params; the params tree keeps its tensors.
    assert (other == before).all()
    assert all(type(v) is torch.Tensor for v in other.values(True, True))
    torch.testing.assert_close(
        critic(TensorDict(observation=obs, batch_size=[9]))["state_value"], expected
    )
    # Nested dicts work as params too.
    torch.testing.assert_close(nets.value(critic, params.to_dict(), obs), expected)


@pytest.mark.parametrize("kind", ["continuous", "discrete", "critic"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "elu", "silu"])
def test_plain_function_forward_is_the_modules_forward_bit_for_bit(kind, activation):
    """The networks tdppo builds run as plain functions of their params (nets._call); their
    outputs are the TorchRL / tensordict modules' own forward, bit for bit, with the module's
    own weights and with other weights (the module is left as it was)."""
    torch.manual_seed(1)
    if kind == "critic":
        module = nets.make_critic(OBS, activation=activation)
        inner = module
        keys = ["state_value"]
    else:
        module = nets.make_actor(OBS, _spec(kind), activation=activation, init_log_std=-0.3)
        inner = module.module[0]  # the TensorDictModule that writes the distribution params
        keys = ["loc", "scale"] if kind == "continuous" else ["logits"]
    net, _ = nets._network(module)
    assert net._tdppo_pure
    params = TensorDict.from_module(module).detach().clone()
    obs = 3 * torch.randn(33, OBS)
    for shift in (0.0, 0.2):
        p = params.apply(lambda t, s=shift: t + s)
        got = nets._call(module, p.to_dict(), obs)
        got = got if isinstance(got, tuple) else (got,)
        with p.to_module(module):
            ref = inner(TensorDict(observation=obs, batch_size=[33]))
        assert len(got) == len(keys)
        for k, g in zip(keys, got):
            assert torch.equal(g, ref[k]), k
    assert (TensorDict.from_module(module) == params).all()


def test_helpers_vmap_over_stacked_params():
    actors = [_perturbed_actor("continuous", seed) for seed in (0, 1)]
    stacked = torch.stack([TensorDict.from_module(a).detach() for a in actors])
    obs = torch.randn(4, OBS)
    keys = torch.stack([tr.key(0), tr.key(1)])

    def act(params, key):
        dp = nets.dist_params_dict(actors[0], params, obs)
        action = nets.sample(dp, key)
        return action, nets.log_prob(dp, action)

    actions, log_probs = torch.vmap(act)(stacked, keys)
    for i, actor in enumerate(actors):
        a, lp = act(TensorDict.from_module(actor).detach(), keys[i])
        torch.testing.assert_close(actions[i], a, rtol=0, atol=1e-6)
        torch.testing.assert_close(log_probs[i], lp, rtol=0, atol=1e-5)
