"""Populations: many agents in one process, as a leading member dimension of the one state.

PureJaxRL's ``jax.vmap(make_train(config))`` in PyTorch. A population of ``M`` members is the
single-agent TrainState with a leading ``[M]`` on every leaf (params, Adam moments, each
member's normalizer statistics and reward accumulators, env carry, keys, counters, ``hp``), and
the driver (:func:`tdppo.trainer.train`) advances it with the same train step
(:func:`tdppo.learner.make_train_step` with ``members=True``: each level's member function
under ``torch.vmap``). The members are the cartesian product of the ``sweep`` values and the
``seeds`` (seeds vary fastest); member ``i`` *is* the single-agent run of its config: the same
network init, env key, policy and minibatch streams and transform stack.

This module holds what is particular to populations: who the members are
(:func:`member_configs`), and cutting one member out as a single-agent state
(:func:`member_state`), which ``load_policy`` / ``tdppo eval --member`` use.

Exactness (CPU): the vmapped env step, normalizers, GAE recursion, shuffles and Adam do the
single agent's arithmetic bit for bit, except one kernel: a linear layer with a single output
column (the critic head; the policy head of a 1-d action) runs BLAS ``gemv`` alone and a
batched ``gemm`` under ``vmap``, which round differently. With discrete actions (CartPole) each
member's env, statistics, keys and counters equal its single-agent run's bit for bit and its
parameters agree to float32 rounding; with continuous actions the rounding reaches the actions
(tests/test_population.py states the tolerances).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from tensordict import TensorDict, TensorDictBase

from tdppo.config import Config
from tdppo.state import EXACT_KEYS, json_tensor, tensor_json

__all__ = [
    "SWEEPABLE",
    "is_population",
    "member_configs",
    "member_state",
    "population_configs",
    "population_meta",
]

SWEEPABLE = ("lr", "clip_eps", "ent_coef", "vf_coef", "gae_lambda", "gamma")
"""Config fields a sweep may vary: each is held per member in ``state["hp"]``."""


def member_configs(
    config: Config, seeds: Sequence[int], sweep: dict[str, Sequence[float]] | None = None
) -> list[Config]:
    """The members' configs: ``product(*sweep.values(), seeds)`` over ``config``.

    Member ``i`` is ``config`` with ``seed`` and the swept fields replaced; the sweep's fields
    vary in the dict's order, seeds fastest. Raises ``ValueError`` (one line) for a field
    outside :data:`SWEEPABLE`, an empty list, no seeds, or a member config that is invalid.
    """
    sweep = dict(sweep or {})
    bad = [k for k in sweep if k not in SWEEPABLE]
    if bad:
        raise ValueError(
            f"cannot sweep {', '.join(map(repr, bad))}: sweepable fields are "
            f"{', '.join(SWEEPABLE)} (members differing in network size or env are out of scope)"
        )
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("a population needs at least one seed")
    empty = [k for k, v in sweep.items() if len(v) == 0]
    if empty:
        raise ValueError(f"sweep field(s) {', '.join(empty)} have no values")
    names = list(sweep)
    out = []
    for combo in itertools.product(*(sweep[k] for k in names)):
        for seed in seeds:
            fields = {**config.__dict__, "seed": seed, **dict(zip(names, map(float, combo)))}
            out.append(config.__class__(**fields).validate())
    return out


def population_meta(seeds: Sequence[int], sweep: dict, cfgs: Sequence[Config]) -> dict:
    """What ``meta/population_json`` records: the seeds, the sweep and each member's values."""
    swept = list(sweep)
    return {
        "seeds": [int(s) for s in seeds],
        "sweep": {k: [float(x) for x in v] for k, v in sweep.items()},
        "members": [{"seed": c.seed, **{k: getattr(c, k) for k in swept}} for c in cfgs],
    }


def is_population(state: TensorDictBase) -> bool:
    """Whether ``state`` (e.g. a loaded checkpoint) holds a population."""
    return "meta" in state.keys() and "population_json" in state["meta"].keys()


def population_configs(pop_state: TensorDictBase) -> list[Config]:
    """The members' configs of a population state (also of a loaded checkpoint)."""
    if not is_population(pop_state):
        raise ValueError("this state holds a single agent, not a population")
    base = tensor_json(pop_state["meta", "config_json"])
    pop = tensor_json(pop_state["meta", "population_json"])
    return [Config.from_dict({**base, **m}) for m in pop["members"]]


def member_state(pop_state: TensorDictBase, i: int) -> TensorDict:
    """Member ``i`` as a single-agent TrainState (the layout :func:`tdppo.train` returns).

    Every exact key is ``pop_state[key][i]`` (a copy); ``meta["config_json"]`` is the member's
    own config (its seed and swept values), so ``load_policy`` and ``tdppo eval`` work on it.
    Raises ``IndexError`` (one line) if ``i`` is not a member.
    """
    cfgs = population_configs(pop_state)
    if not -len(cfgs) <= i < len(cfgs):
        raise IndexError(f"member {i} out of range: the population has {len(cfgs)} members")
    i = i % len(cfgs)
    out = TensorDict({k: pop_state[k][i].clone() for k in EXACT_KEYS}, batch_size=[])
    meta = pop_state["meta"].exclude("population_json", "config_json").clone()
    meta["config_json"] = json_tensor(cfgs[i].to_dict())
    out["meta"] = meta
    return out
