"""The pure functions of a population, ``torch.vmap``-ped over a leading member dimension ``M``.

- :func:`member_step`: one vector step of one member (policy -> dynamics + autoreset ->
  normalizers), the fused collector's step (:class:`tdppo.rollout.FusedCollector`) over plain
  dicts with the member's env key as an argument; :func:`make_population_step` vmaps it.
- :func:`make_values_and_gae`: ``V(s)``, ``V(s')`` and GAE, each member with its own
  ``gamma`` / ``lambda``.
- :func:`make_population_update`: :func:`tdppo.ppo.make_update`'s epochs x minibatches loop
  around ``torch.vmap`` of :func:`tdppo.ppo.make_minibatch_step` (per-member shuffles,
  per-member global-norm clipping, per-member hyperparameters as tensors).

Compiled functions are wrapped in named functions of this module (so that each has its own code
object and dynamo cache) and take and return plain dicts: no TensorDict is traced, so no guard
on tensordict internals can force a recompilation. :func:`captured` checks that a compiled
function really holds a graph (``torch.compile`` of a vmapped function can capture nothing and
run eagerly without a word).

>>> import torch
>>> from tdppo import ppo
>>> r, v = torch.ones(2, 1, 3, 1), torch.zeros(2, 1, 3, 1)
>>> never = torch.zeros(2, 1, 3, 1, dtype=torch.bool)
>>> gamma = torch.tensor([0.5, 1.0], dtype=torch.float64)
>>> torch.vmap(ppo.gae)(r, v, v, never, never, gamma, torch.ones(2, dtype=torch.float64))[0][
...     :, 0, :, 0]
tensor([[1.7500, 1.5000, 1.0000],
        [3.0000, 2.0000, 1.0000]])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.utils._pytree as pytree
from tensordict import TensorDict, TensorDictBase

from tdppo import nets, ppo
from tdppo import random as trand
from tdppo.rollout import FusedCollector, Plan
from tdppo.rollout import fused_step as member_step

__all__ = [
    "STEP_HP",
    "member_step",
    "make_population_step",
    "make_values_and_gae",
    "make_population_update",
    "captured",
]

STEP_HP = ("lr", "clip_eps", "vf_coef", "ent_coef", "max_grad_norm")
"""The float32 ``[M]`` hyperparameters the update reads."""


def _plan(fused: FusedCollector) -> Plan:
    """The transform plan as constants: ``(index in Compose, kind, eps, clip)``."""
    return tuple(
        (i, kind, float(getattr(t, "eps", 0.0)), getattr(t, "clip", None))
        for i, kind, t in fused.plan
    )


def make_population_step(fused: FusedCollector, actor: torch.nn.Module, compile: bool):
    """``step(carry, tstate, params, key, env_key) -> (carry, tstate, transition)``: the
    :func:`member_step` of every member at once (dict leaves ``[M, E, ...]`` / ``[M, ...]``,
    ``key`` / ``env_key`` ``[M]``), ``torch.vmap``-ped; compiled (one graph) if ``compile``."""
    plan, dyn = _plan(fused), fused.dyn

    def one(carry, tstate, params, key, env_key):
        return member_step(plan, dyn, actor, carry, tstate, params, key, env_key)

    def population_step(carry, tstate, params, key, env_key):
        return torch.vmap(one)(carry, tstate, params, key, env_key)

    return _compiled(population_step) if compile else population_step


def make_values_and_gae(critic: torch.nn.Module, compile: bool):
    """``fn(value_params, obs, next_obs, reward, terminated, done, gamma, lam) -> (value,
    advantage, value_target)`` over ``[M, E, T, ...]`` tensors; ``gamma`` / ``lam`` float64
    ``[M]``, which vmap hands to :func:`tdppo.ppo.gae` as 0-d tensors that promote like the
    single agent's python floats (bit for bit the same GAE)."""

    def one(params, obs, next_obs, reward, terminated, done, gamma, lam):
        value = nets.value(critic, params, obs)
        next_value = nets.value(critic, params, next_obs)
        adv, target = ppo.gae(reward, value, next_value, terminated, done, gamma, lam)
        return value, adv, target

    def population_values_and_gae(params, obs, next_obs, reward, terminated, done, gamma, lam):
        return torch.vmap(one)(params, obs, next_obs, reward, terminated, done, gamma, lam)

    return _compiled(population_values_and_gae) if compile else population_values_and_gae


def make_population_update(
    actor: torch.nn.Module,
    critic: torch.nn.Module,
    *,
    epochs: int,
    minibatches: int,
    clip_vloss: bool = True,
    norm_adv: bool = True,
    compile: bool = True,
) -> Callable:
    """``update(params, opt_state, batch, key, hp) -> (params, opt_state, metrics)`` for ``M``
    members: :func:`tdppo.ppo.make_update` with a member dimension.

    Args (all with leading ``M``): ``params`` / ``opt_state`` TensorDicts (batch ``[M]``) or
    nested dicts; ``batch`` a TensorDict ``[M, B]`` with :func:`tdppo.ppo.ppo_loss`'s keys;
    ``key`` int64 ``[M]``; ``hp`` float32 ``[M]`` :data:`STEP_HP`.

    Member ``m`` shuffles epoch ``e`` by ``permutation(fold_in(key[m], e), B)`` (the single
    agent's draw); each minibatch step is ``torch.vmap`` of ``ppo.make_minibatch_step`` (one
    graph with ``fullgraph=True`` when ``compile``), so gradient clipping is per member.
    Returns new trees in the inputs' container types and ``metrics``, a TensorDict ``[M]`` of
    :data:`tdppo.ppo.METRICS` averaged over the minibatch steps.
    """
    one = ppo.make_minibatch_step(actor, critic, clip_vloss=clip_vloss, norm_adv=norm_adv)

    def population_minibatch_step(params, opt_state, minibatch, hp):
        return torch.vmap(one)(params, opt_state, minibatch, hp)

    step = _compiled(population_minibatch_step) if compile else population_minibatch_step

    def update(params, opt_state, batch, key, hp):
        members, size = batch.batch_size[0], batch.batch_size[1]
        mb_size = size // minibatches
        if mb_size * minibatches != size:
            raise ValueError(f"batch of {size} does not split into {minibatches} minibatches")
        p, o = _plain(params), _plain(opt_state)
        h = {k: hp[k] for k in STEP_HP}
        data = {k: batch[k] for k in ppo.BATCH_KEYS}
        rows = torch.arange(members, device=key.device).unsqueeze(-1)
        total = dict.fromkeys(ppo.METRICS, 0.0)
        for epoch in range(epochs):
            perm = trand.permutation(trand.fold_in(key, epoch), size)  # [M, B]
            shuffled = {k: v[rows, perm] for k, v in data.items()}  # one gather per key
            for i in range(minibatches):
                mb = {k: v[:, i * mb_size : (i + 1) * mb_size] for k, v in shuffled.items()}
                p, o, metrics = step(p, o, mb, h)
                total = {k: total[k] + metrics[k] for k in ppo.METRICS}
        n = epochs * minibatches
        metrics = TensorDict({k: v / n for k, v in total.items()}, batch_size=[members])
        return _like(params, p), _like(opt_state, o), metrics

    update.minibatch_step = step
    return update


def _plain(tree):
    if isinstance(tree, TensorDictBase):
        tree = tree.to_dict()
    return pytree.tree_map(torch.Tensor.detach, tree)


def _like(template, tree):
    if isinstance(template, TensorDictBase):
        return template.empty(recurse=True).update(tree)
    return tree


# ----------------------------------------------------------------------------- compile check


def _compiled(fn: Callable, backend: str = "inductor") -> Callable:
    out = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
    out.__tdppo_code__ = fn.__code__
    return out


def captured(fn: Callable) -> bool:
    """Whether the compiled function ``fn`` (from this module: a ``make_*`` result, or an
    update's ``minibatch_step``) holds at least one dynamo graph after it has been called.

    Reads dynamo's cache for the function's code object: an entry whose bytecode calls a
    ``__compiled_fn`` ran a captured graph; none (a frame dynamo skipped, or one that it
    traced into an empty graph) means the function runs eagerly.
    """
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    fn = getattr(fn, "minibatch_step", fn)
    code = getattr(fn, "__tdppo_code__", None)
    if code is None:
        return False
    for entry in _debug_get_cache_entry_list(code):
        if any(name.startswith("__compiled_fn") for name in entry.code.co_names):
            return True
    return False
