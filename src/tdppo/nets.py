"""Actor and critic as TorchRL modules, and pure functions that run them with given params.

The modules are ordinary TorchRL modules (:class:`~torchrl.modules.ProbabilisticActor`,
:class:`~torchrl.modules.ValueOperator`) so that TorchRL's losses, collectors and
``load_policy`` can use them. Training does not call them directly: it holds their parameters
in a TensorDict (``TensorDict.from_module(actor)``) and calls the pure helpers below, which run
the module's network with those params through ``torch.func.functional_call`` and compute the
distribution's quantities in closed form. That path is the same eagerly, under
``torch.compile``, ``torch.func.grad`` and ``torch.vmap``, and its randomness comes from
:mod:`tdppo.random` keys instead of a global generator.

Distribution parameters travel as a TensorDict: ``{"loc", "scale"}`` (each ``[*B, A]``) for a
Gaussian policy, ``{"logits"}`` (``[*B, n]``) for a categorical one. Actions are ``[*B, A]``
floats (not squashed: the env clips them, as CleanRL does) or ``[*B]`` int64 indices;
log-probabilities and entropies are ``[*B]`` (summed over action dimensions).

>>> import torch
>>> from tensordict import TensorDict
>>> from torchrl.data import Bounded
>>> from tdppo import random as tr
>>> actor = make_actor(3, Bounded(-2.0, 2.0, shape=(1,)))
>>> params = TensorDict.from_module(actor).detach()
>>> dp = dist_params(actor, params, torch.zeros(5, 3))
>>> action = sample(dp, tr.key(0))
>>> action.shape, log_prob(dp, action).shape
(torch.Size([5, 1]), torch.Size([5]))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDict
from tensordict.nn import AddStateIndependentNormalScale, TensorDictModule
from torch import nn
from torchrl.data import Categorical, MultiCategorical, TensorSpec
from torchrl.modules import IndependentNormal, ProbabilisticActor, ValueOperator

from tdppo import random as tr

__all__ = [
    "LOG_PROB_KEY",
    "make_actor",
    "make_critic",
    "structure",
    "dist_params",
    "dist_params_dict",
    "sample",
    "log_prob",
    "entropy",
    "mode",
    "value",
]

LOG_PROB_KEY = "sample_log_prob"
"""Where the actor writes the log-probability of its sampled action. TorchRL 0.14 would default
to ``"action_log_prob"`` (``composite_lp_aggregate()`` is False); tdppo passes this key
explicitly so the rollout, the loss and TorchRL's ``ClipPPOLoss`` all read the same entry."""

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int],
    activation: str,
    head_std: float,
    device: torch.device | str | None,
) -> nn.Sequential:
    """Linear/activation stack, orthogonal init (gain sqrt(2) hidden, ``head_std`` last), zero
    biases: CleanRL's ``layer_init``."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    sizes = [in_dim, *hidden]
    for i in range(len(hidden)):
        layers += [_linear(sizes[i], sizes[i + 1], math.sqrt(2.0), device)]
        layers += [_ACTIVATIONS[activation]()]
    layers.append(_linear(sizes[-1], out_dim, head_std, device))
    return _mark_pure(nn.Sequential(*layers))


def _mark_pure(net: nn.Sequential) -> nn.Sequential:
    """Mark a network of biased Linear layers, :data:`_ACTIVATIONS` and an exp-mapped
    ``AddStateIndependentNormalScale`` head, which :func:`_call` runs as a plain function."""
    net._tdppo_pure = True
    return net


def _linear(n_in: int, n_out: int, std: float, device: torch.device | str | None) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, device=device)
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


def _is_discrete(action_spec: TensorSpec) -> bool:
    if isinstance(action_spec, Categorical) and not isinstance(action_spec, MultiCategorical):
        return True  # one integer index per decision
    if action_spec.dtype.is_floating_point:
        return False
    raise TypeError(f"unsupported action spec {type(action_spec).__name__}: use Box or Categorical")


def make_actor(
    obs_dim: int,
    action_spec: TensorSpec,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    init_log_std: float = 0.0,
    device: torch.device | str | None = None,
) -> ProbabilisticActor:
    """The policy: ``observation`` ``[*B, obs_dim]`` in; ``action`` and ``sample_log_prob`` out.

    * Box (float) spec with shape ``[A]``: an MLP gives ``loc`` ``[*B, A]``; ``scale`` is
      ``exp(log_std)`` with a learnable, state-independent ``log_std`` ``[A]`` (TorchRL's
      ``AddStateIndependentNormalScale``, which floors the scale at 1e-4); the distribution is
      ``IndependentNormal`` (a diagonal Gaussian, log-prob summed over ``A``), not squashed.
    * Integer (``Categorical``) spec with ``n`` actions: the MLP gives ``logits`` ``[*B, n]``;
      the distribution is ``torch.distributions.Categorical``; actions are ``[*B]`` int64.

    Orthogonal init with gain sqrt(2) for hidden layers and 0.01 for the policy head, zero
    biases. ``return_log_prob=True`` writes :data:`LOG_PROB_KEY`. The default interaction is
    deterministic (the mean / the most likely action); collectors switch it to random.
    """
    if _is_discrete(action_spec):
        n = int(action_spec.space.n)
        net = _mlp(obs_dim, n, hidden, activation, 0.01, device)
        module = TensorDictModule(net, in_keys=["observation"], out_keys=["logits"])
        dist_keys, dist_class = ["logits"], torch.distributions.Categorical
    else:
        (act_dim,) = action_spec.shape[-1:]
        body = _mlp(obs_dim, act_dim, hidden, activation, 0.01, device)
        scale = AddStateIndependentNormalScale(
            act_dim, scale_mapping="exp", init_value=init_log_std, device=device
        )
        net = _mark_pure(nn.Sequential(*body, scale))
        module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
        dist_keys, dist_class = ["loc", "scale"], IndependentNormal
    return ProbabilisticActor(
        module,
        in_keys=dist_keys,
        out_keys=["action"],
        spec=action_spec.to(device) if device is not None else action_spec,
        distribution_class=dist_class,
        return_log_prob=True,
        log_prob_key=LOG_PROB_KEY,
    )


def make_critic(
    obs_dim: int,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    device: torch.device | str | None = None,
) -> ValueOperator:
    """The value function: ``observation`` ``[*B, obs_dim]`` in, ``state_value`` ``[*B, 1]``
    out. Orthogonal init (sqrt(2) hidden, 1.0 head), zero biases."""
    net = _mlp(obs_dim, 1, hidden, activation, 1.0, device)
    return ValueOperator(net, in_keys=["observation"], out_keys=["state_value"])


def _network(module: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """The plain network inside a tdppo actor / critic and its key prefix in
    ``TensorDict.from_module(module)``."""
    if isinstance(module, ProbabilisticActor):
        return module.module[0].module, ("module", "0", "module")
    if isinstance(module, TensorDictModule):
        return module.module, ("module",)
    raise TypeError(f"expected a tdppo actor or critic, got {type(module).__name__}")


def _subtree(tree: Mapping, key: tuple[str, ...]) -> Mapping:
    for k in key:
        tree = tree[k]
    return tree


def structure(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are on the ``meta`` device: its layers
    and shapes, no values (specs and other attributes are kept). The pure functions take the
    parameters as arguments; closing over this copy instead of the live module keeps values out
    of them: nothing can read a stale weight, and their fingerprint (:mod:`tdppo.fingerprint`,
    which keys compiled code) is the same for every seed."""
    out = copy.deepcopy(module)
    for m in out.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = b.to("meta")
    return out


def _call(module: nn.Module, params: Mapping, obs: torch.Tensor):
    """Run ``module``'s network on ``obs`` with ``params`` (``from_module(module)`` layout, as a
    TensorDict or nested dict); neither is modified.

    The networks :func:`make_actor` and :func:`make_critic` build (marked ``_tdppo_pure``) run
    as plain functions of ``params``, layer by layer with the ops of each layer's ``forward``
    (the same bits): ``torch.compile`` traces that faster than ``torch.func.functional_call``'s
    parameter swapping (README, Performance). Any other network goes through
    ``functional_call``."""
    net, prefix = _network(module)
    sub = _subtree(params, prefix)
    if getattr(net, "_tdppo_pure", False):
        x = obs
        for name, layer in net.named_children():
            if isinstance(layer, nn.Linear):
                x = nn.functional.linear(x, sub[name]["weight"], sub[name]["bias"])
            elif isinstance(layer, AddStateIndependentNormalScale):  # exp mapping, the last layer
                scale = sub[name]["state_independent_scale"].expand_as(x)
                return x, torch.exp(scale).clamp_min(layer.scale_lb)
            else:  # an activation of _ACTIVATIONS: no parameters
                x = layer(x)
        return x
    tensors = {}
    for name, _ in [*net.named_parameters(), *net.named_buffers()]:
        tensors[name] = _subtree(sub, tuple(name.split(".")))
    return torch.func.functional_call(net, tensors, (obs,))


def dist_params_dict(
    actor: ProbabilisticActor, params: Mapping, obs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """:func:`dist_params` as a plain dict: ``{"loc", "scale"}`` or ``{"logits"}``. Cheaper to
    trace under ``torch.compile`` than a TensorDict; every helper below accepts either."""
    out = _call(actor, params, obs)
    if isinstance(out, tuple):
        loc, scale = out
        return {"loc": loc, "scale": scale}
    return {"logits": out}


def dist_params(actor: ProbabilisticActor, params: Mapping, obs: torch.Tensor) -> TensorDict:
    """Distribution parameters of ``actor`` with ``params`` (``TensorDict.from_module(actor)``
    layout; a TensorDict or nested dict) at ``obs`` ``[*B, obs_dim]``: ``{"loc", "scale"}``
    (``[*B, A]``) or ``{"logits"}`` (``[*B, n]``), batch size ``[*B]``."""
    return TensorDict(dist_params_dict(actor, params, obs), batch_size=obs.shape[:-1])


def _gaussian(dp: Mapping) -> bool:
    return "loc" in dp.keys()


def sample(dp: Mapping, key: torch.Tensor, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """An action drawn with :mod:`tdppo.random` from a single (0-d) ``key``.

    Gaussian: ``loc + scale * normal(key, loc.shape)`` ``[*B, A]``; categorical:
    ``argmax(logits + gumbel(key, logits.shape))`` ``[*B]`` int64 (the Gumbel-max trick).
    ``rows=(offset, total)``: the ``B`` rows are rows ``offset...`` of a batch of ``total``, and
    draw that batch's noise (a shard samples what the whole batch would).
    """
    ref = dp["loc"] if _gaussian(dp) else dp["logits"]
    shape, lo = ref.shape, 0
    if rows is not None:
        lo, total = rows
        shape = torch.Size((total, *ref.shape[1:]))
    draw = tr.normal if _gaussian(dp) else tr.gumbel
    noise = draw(key, shape, ref.dtype)
    if rows is not None:
        noise = noise[lo : lo + ref.shape[0]]
    if _gaussian(dp):
        return ref + dp["scale"] * noise
    return torch.argmax(ref + noise, dim=-1)


def log_prob(dp: Mapping, action: torch.Tensor) -> torch.Tensor:
    """``log pi(action)`` ``[*B]``, summed over action dimensions (``torch.distributions``'
    formulas, without their argument validation, which syncs with the host)."""
    if _gaussian(dp):
        loc, scale = dp["loc"], dp["scale"]
        lp = -((action - loc) ** 2) / (2 * scale**2) - scale.log() - _HALF_LOG_2PI
        return lp.sum(-1)
    logp = torch.log_softmax(dp["logits"], dim=-1)
    return logp.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)


def entropy(dp: Mapping) -> torch.Tensor:
    """Entropy of the policy ``[*B]`` (summed over action dimensions)."""
    if _gaussian(dp):
        return (0.5 + _HALF_LOG_2PI + dp["scale"].log()).sum(-1)
    logp = torch.log_softmax(dp["logits"], dim=-1)
    return -(logp.exp() * logp).sum(-1)


def mode(dp: Mapping) -> torch.Tensor:
    """The deterministic action: ``loc`` ``[*B, A]`` or ``argmax(logits)`` ``[*B]``."""
    if _gaussian(dp):
        return dp["loc"]
    return torch.argmax(dp["logits"], dim=-1)


def value(critic: ValueOperator, params: Mapping, obs: torch.Tensor) -> torch.Tensor:
    """``V(obs)`` ``[*B, 1]`` from ``critic`` run with ``params`` (``from_module`` layout)."""
    return _call(critic, params, obs)
