"""The train step: ``step(state) -> (new_state, metrics)``, one PPO iteration as a function.

Brax's levels, named once::

    training_step   step(state): ROLLOUT -> VALUES + GAE -> UPDATE -> COUNTERS
    rollout         T vector steps (collector.env_step: policy -> dynamics -> normalizers)
    sgd_step        one epoch: a shuffle, then the minibatch steps (tdppo.ppo.make_update)
    minibatch_step  grad of the clipped loss -> global-norm clip -> Adam (tdppo.ppo)

``step`` reads the state and builds a new one: it never writes into its input (with the
built-in torch envs; the gym backend steps live simulators, the one impure boundary). The
driver (:func:`tdppo.trainer.train`) checks the returned finiteness flags and copies the
new state in with one ``state.update_(new_state)``. A population is the same step with
``members=True``: every level's member function runs under ``torch.vmap`` over the leading
member dimension, and the Python loops over ``T``, epochs and minibatches are shared.

Everything random is a pure function of the state's key and counters: policy noise of vector
step ``s`` is ``fold_in(fold_in(key, POLICY), s)``, the shuffles of update ``u`` are
``fold_in(fold_in(key, MINIBATCH), u)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict

from tdppo import nets, ppo
from tdppo import random as trand
from tdppo.config import Config
from tdppo.distributed import Shards
from tdppo.setup import Components
from tdppo.state import STREAMS

__all__ = ["TrainStep", "make_train_step", "nonfinite_count"]

TrainStep = Callable[[TensorDict], tuple[TensorDict, TensorDict]]


def nonfinite_count(transforms: TensorDict) -> torch.Tensor:
    """Batches the normalizers skipped because they held NaN/inf (their ``nonfinite`` buffers),
    summed over members too."""
    leaves = transforms.flatten_keys("/")
    counts = [v.sum() for k, v in leaves.items() if k.endswith("nonfinite")]
    return torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.int64)


def make_train_step(
    cfg: Config, parts: Components, *, members: bool = False, shards: Shards | None = None
) -> TrainStep:
    """``step(state) -> (new_state, metrics)`` for ``cfg`` over the components of setup.

    ``state``: the TrainState (``tdppo.state`` layout, with ``hp``); with ``members`` every
    leaf has a leading member dimension ``M``. ``new_state`` has the same keys, shapes and
    dtypes (``meta`` is left out: the driver owns it). ``metrics`` (batch ``[]`` or ``[M]``):
    :data:`tdppo.ppo.METRICS` averaged over the update's minibatch steps, ``lr`` (the annealed
    learning rate, float32), ``episodes_done`` and ``episode_return_mean`` (raw return of the
    episodes that ended in this rollout; 0 when none did), ``rollout_finite`` (the rollout's
    observations and rewards are finite and no normalizer skipped a non-finite batch) and
    ``params_finite`` (every new parameter is finite), each over all members.

    ``shards`` (data parallel over processes, :mod:`tdppo.distributed`): ``state`` holds this
    process's envs; the collectives sit in the env step (normalizer moments), the minibatch step
    (advantage moments, gradients, metrics) and here (episode counts and returns, the
    finiteness flags), so every process computes the same parameters, statistics and counters.

    The step's hot parts are compiled separately when ``cfg.compile`` (the env step and the
    minibatch step; ``--cudagraphs`` puts the minibatch step in CUDA graphs);
    ``step.compiled_parts`` lists them for :func:`tdppo.jit.captured`. Values + GAE run eagerly.
    """
    critic, collector = parts.critic, parts.collector
    shards = shards or Shards()
    num_steps, anneal = cfg.num_steps, cfg.anneal_frames
    lead = 1 if members else 0  # member dims in front of each leaf

    def member_values_and_gae(params, obs, next_obs, reward, terminated, done, gamma, lam):
        value = nets.value(critic, params, obs)
        next_value = nets.value(critic, params, next_obs)
        advantage, target = ppo.gae(reward, value, next_value, terminated, done, gamma, lam)
        return value, advantage, target

    def population_values_and_gae(params, obs, next_obs, reward, terminated, done, gamma, lam):
        return torch.vmap(member_values_and_gae)(
            params, obs, next_obs, reward, terminated, done, gamma, lam
        )

    # eager even with compile: it runs once per iteration, and its compile cost more than it saves
    values_and_gae = population_values_and_gae if members else member_values_and_gae
    update = ppo.make_update(
        parts.actor,
        critic,
        epochs=cfg.epochs,
        minibatches=cfg.minibatches,
        clip_vloss=cfg.clip_vloss,
        norm_adv=cfg.norm_adv,
        compile=cfg.compile,
        mode="reduce-overhead" if cfg.cudagraphs else None,
        members=members,
        shards=shards,
    )

    def step(state: TensorDict) -> tuple[TensorDict, TensorDict]:
        counters, hp, key = state["counters"], state["hp"], state["rng", "key"]
        env = state["env"]
        carry_keys = [k for k in env.keys() if k != "module"]
        env_batch = env[carry_keys[0]].shape[: lead + 1]
        # ROLLOUT: T vector steps, no host sync
        with torch.no_grad():
            carry, tstate, batch = collector.collect(
                TensorDict({k: env[k] for k in carry_keys}, batch_size=env_batch),
                state["transforms"],
                state["policy"],
                counters["steps"],
                num_steps,
                policy_key=trand.fold_in(key, STREAMS["policy"]),
                env_key=env.get(("module", "rng_key"), None),  # built-in envs only
            )
            carry = carry.select(*carry_keys)
            # VALUES + GAE: V(s'), the value of the final pre-reset observation, bootstraps
            # truncation; termination does not bootstrap
            value, advantage, target = values_and_gae(
                state["value"].to_dict(),
                batch["observation"],
                batch["next", "observation"],
                batch["next", "reward"],
                batch["next", "terminated"],
                batch["next", "done"],
                hp["gamma"],
                hp["gae_lambda"],
            )
        data = {k: batch[k] for k in ("observation", "action", nets.LOG_PROB_KEY)}
        data.update(state_value=value, advantage=advantage, value_target=target)
        data = {k: v.flatten(lead, lead + 1) for k, v in data.items()}  # [*M, E * T, ...]
        # UPDATE: epochs x minibatches; lr annealed in float64 as cfg.lr * max(frac, 0)
        lr = hp["lr"]
        if anneal:
            frac = 1.0 - counters["frames"].to(torch.float64) / anneal
            lr = lr * frac.clamp(min=0.0)
        update_hp = {k: hp[k].to(torch.float32) for k in ppo.UPDATE_HP}
        update_hp["lr"] = lr.to(torch.float32)
        params = state.select("policy", "value")
        new_params, new_opt, metrics = update(
            params,
            state["optimizer"],
            data,
            trand.fold_in(trand.fold_in(key, STREAMS["minibatch"]), counters["updates"]),
            update_hp,
        )
        # COUNTERS and METRICS (tensors; the driver reads them once per update)
        done = batch["next", "done"].flatten(lead)
        n_done = shards.sum(done.sum(-1))
        ep_return = shards.sum((batch["next", "episode_reward"].flatten(lead) * done).sum(-1))
        new_counters = TensorDict(
            {
                "frames": counters["frames"] + cfg.batch_size,
                "steps": counters["steps"] + num_steps,
                "updates": counters["updates"] + 1,
                "episodes": counters["episodes"] + n_done,
            },
            batch_size=counters.batch_size,
        )
        rollout_finite = shards.all(
            torch.isfinite(batch["next", "reward"]).all()
            & torch.isfinite(batch["next", "observation"]).all()
            & (nonfinite_count(tstate) == nonfinite_count(state["transforms"]))
        )
        params_finite = shards.all(
            torch.stack([torch.isfinite(v).all() for v in new_params.values(True, True)]).all()
        )
        metrics["lr"] = update_hp["lr"]
        metrics["episodes_done"] = n_done
        metrics["episode_return_mean"] = ep_return / n_done.clamp(min=1)
        metrics["rollout_finite"] = rollout_finite.expand(metrics.batch_size)
        metrics["params_finite"] = params_finite.expand(metrics.batch_size)
        new_env = TensorDict(dict(carry.items()), batch_size=env.batch_size)
        if "module" in env.keys():
            new_env["module"] = env["module"]
        new_state = TensorDict(
            {
                "policy": new_params["policy"],
                "value": new_params["value"],
                "optimizer": new_opt,
                "transforms": tstate,
                "env": new_env,
                "rng": state["rng"],
                "hp": hp,
                "counters": new_counters,
            },
            batch_size=state.batch_size,
        )
        return new_state, metrics

    step.values_and_gae = values_and_gae  # eager (benchmarks/step_profile.py times it alone)
    step.compiled_parts = {
        "env_step": collector.env_step if hasattr(collector, "env_step") else None,
        "minibatch_step": update.minibatch_step,
    }
    return step
