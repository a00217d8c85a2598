"""Many agents in one process: seeds and hyperparameter sweeps as a leading member dimension.

PureJaxRL's ``jax.vmap(make_train(config))`` in PyTorch. A population of ``M`` members is one
TensorDict whose every leaf gains a leading ``[M]`` dimension: params, Adam moments, each
member's normalizer statistics and reward accumulators, env carry, keys and counters. The
members are the cartesian product of the ``sweep`` values and the ``seeds`` (seeds vary
fastest), and member ``i`` *is* the single-agent run :func:`tdppo.train` would make with its
seed and hyperparameters: the same network init (``torch.manual_seed(seed)`` in
:func:`tdppo.trainer.build_components`), the same env key, the same policy and minibatch
streams of ``tdppo.random.key(seed)``, the same transform stack. Read top to bottom::

    SETUP     one single-agent state per member (exactly as train builds it), stacked
    RESUME    strict load of the latest intact checkpoint (the whole population)
    LOOP      COLLECT: torch.vmap of the fused step over members (T calls, no member loop)
              VALUES + GAE: vmapped, each member with its own gamma / lambda
              UPDATE: torch.vmap of ppo.make_minibatch_step (per-member shuffles, per-member
              global-norm clipping, per-member lr / clip / coefficients as tensors)
              LOG (one metrics.csv row per member) -> CHECKPOINT (one for all members)

Population state layout (the single-agent keys, each a TensorDict with batch ``[M]``)::

    policy, value, optimizer, transforms, env, rng, counters    as in tdppo.state, [M]-stacked
    hp      float64 [M]: lr, clip_eps, vf_coef, ent_coef, max_grad_norm, gamma, gae_lambda
    meta    config_json (the base config), population_json (seeds, sweep, members), versions

:func:`member_state` cuts member ``i`` out as a single-agent state (its own config in
``meta``), which ``load_policy`` / ``tdppo eval`` can use unchanged.

Exactness (CPU, eager): the vmapped env step, normalizers, GAE recursion, shuffles and Adam
do the single agent's arithmetic bit for bit, except one kernel: a linear layer with a single
output column (the critic head; the policy head of a 1-d action) runs BLAS ``gemv`` in the
single agent and a batched ``gemm`` under ``vmap``, which round differently (~1e-7). With
discrete actions (CartPole) each member's env, normalizer statistics, keys and counters equal
its single-agent run's bit for bit after 10 updates, its parameters to ~1e-7; with continuous
actions (Pendulum) the rounding reaches the actions and the pendulum amplifies it: within 1e-5
after 4 updates, a few 1e-5 (relative) after 10 (tests/test_population.py).
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from tensordict import TensorDict, TensorDictBase

from tdppo import checkpoint as ckpt
from tdppo import ppo
from tdppo import random as trand
from tdppo.config import Config, config_diff
from tdppo.envs import DYNAMICS
from tdppo.metrics import MetricsLog
from tdppo.optim import adam_init
from tdppo.population_fns import (
    STEP_HP,
    captured,
    make_population_step,
    make_population_update,
    make_values_and_gae,
)
from tdppo.state import EXACT_KEYS, STREAMS, build_state, json_tensor, tensor_json, write_back

__all__ = [
    "SWEEPABLE",
    "member_configs",
    "train_population",
    "member_state",
    "population_configs",
    "is_population",
]

SWEEPABLE = ("lr", "clip_eps", "ent_coef", "vf_coef", "gae_lambda", "gamma")
"""Config fields a sweep may vary: each is held as a per-member tensor in ``state["hp"]``."""

_HP_KEYS = (*STEP_HP, "gamma", "gae_lambda")


# ----------------------------------------------------------------------------- members


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


def _check_backend(cfg: Config) -> None:
    if cfg.backend == "gym" or cfg.env not in DYNAMICS:
        raise ValueError(
            f"train_population runs the built-in torch envs only (backend 'torch': "
            f"{', '.join(DYNAMICS)}); got env {cfg.env!r} with backend {cfg.backend!r}"
        )


def _hp(cfgs: Sequence[Config], device: torch.device) -> TensorDict:
    """Per-member hyperparameters, float64 ``[M]`` (python floats exactly)."""
    vals = {k: [float(getattr(c, k)) for c in cfgs] for k in _HP_KEYS}
    return TensorDict(
        {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in vals.items()},
        batch_size=[len(cfgs)],
    )


def _step_hp(hp: TensorDict, lr_scale: float) -> dict[str, torch.Tensor]:
    """float32 hyperparameters of the update, rounded as ``trainer._hp`` rounds python floats
    (the annealed lr is computed in float64 first, as the trainer's ``cfg.lr * frac``)."""
    out = {k: hp[k].to(torch.float32) for k in STEP_HP}
    if lr_scale != 1.0:
        out["lr"] = (hp["lr"] * lr_scale).to(torch.float32)
    return out


# ----------------------------------------------------------------------------- state


def _member_init(cfg: Config, device: torch.device):
    """``(state, actor, critic, fused)`` of one member, built exactly as ``train`` builds it."""
    from tdppo.rollout import make_collector
    from tdppo.trainer import build_components, carry_keys

    env, actor, critic = build_components(cfg, device)
    policy_key = trand.fold_in(trand.key(cfg.seed, device), STREAMS["policy"])
    try:
        fused = make_collector(env, actor, policy_key, compile=False, fused=True)
    except NotImplementedError as e:
        raise ValueError(f"train_population needs the fused torch pipeline: {e}") from None
    carry = env.reset().select(*carry_keys(fused))
    params0 = TensorDict(
        {
            "policy": TensorDict.from_module(actor).data,
            "value": TensorDict.from_module(critic).data,
        },
        batch_size=[],
    )
    state = build_state(
        actor=actor,
        critic=critic,
        env=env,
        carry=carry,
        opt_state=adam_init(params0.clone()),
        seed=cfg.seed,
        config=cfg.to_dict(),
        device=device,
    )
    return state, actor, critic, fused


def _population_meta(seeds: Sequence[int], sweep: dict, cfgs: list[Config]) -> dict:
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

    ``policy``, ``value``, ``optimizer``, ``transforms``, ``env``, ``rng``, ``counters`` are
    ``pop_state[key][i]`` (copies); ``meta["config_json"]`` is the member's own config (its
    seed and swept values), so ``tdppo.policy.config_of`` and ``load_policy`` work on it.
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


# ----------------------------------------------------------------------------- the loop


def _say(cfg: Config, msg: str) -> None:
    if not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)


def train_population(
    config: Config,
    seeds: Sequence[int],
    sweep: dict[str, list[float]] | None = None,
) -> TensorDict:
    """Train ``len(sweep combinations) x len(seeds)`` independent PPO agents in one process.

    Args:
        config: the base config (built-in torch env; ``config.seed`` is ignored).
        seeds: the members' seeds.
        sweep: ``{field: values}`` over :data:`SWEEPABLE` fields, crossed with ``seeds``.

    Returns:
        The population state (module docstring); ``member_state(state, i)`` is member ``i``.

    Writes ``run_dir/metrics.csv``, one row per member per logged update: ``member``,
    ``seed``, ``sweep_<field>`` per swept field, then the single-agent columns (``frames`` per
    member; ``sps`` counts all members' frames); and checkpoints
    ``run_dir/checkpoints/<frames per member>/``, each holding every member.
    ``config.resume`` continues the run (the same seeds and sweep), bit for bit on CPU.
    """
    from tdppo.trainer import resolve_device, set_threads

    # -- SETUP -----------------------------------------------------------------------------------
    cfg = config.validate()
    _check_backend(cfg)
    sweep = dict(sweep or {})
    cfgs = member_configs(cfg, seeds, sweep)
    device = resolve_device(cfg.device)
    set_threads(cfg.threads, device)
    if cfg.resume and not cfg.run_dir:
        raise ValueError("--resume needs --run-dir (the run to continue)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run_dir or f"runs/{cfg.env}-pop{len(cfgs)}-{stamp}")
    if not cfg.resume and (run_dir / "checkpoints").exists() and ckpt.list_checkpoints(run_dir):
        raise ValueError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose "
            "another --run-dir (nothing was overwritten)"
        )
    pop_meta = _population_meta(seeds, sweep, cfgs)
    saved = None
    if cfg.resume:
        path, skipped = ckpt.resolve(run_dir)
        for bad, why in skipped:
            print(f"tdppo: skipping damaged checkpoint {bad}: {why}", file=sys.stderr, flush=True)
        saved = ckpt.load_checkpoint(path, device=device)
        diff = config_diff(tensor_json(saved["meta", "config_json"]), cfg)
        if is_population(saved) and tensor_json(saved["meta", "population_json"]) != pop_meta:
            diff.append("seeds / sweep (the population's members)")
        if not is_population(saved):
            diff.append("population: the checkpoint holds a single agent")
        if diff:
            raise ValueError(
                f"cannot resume {run_dir} with a different config; fields that cannot change "
                f"mid-run differ: {', '.join(diff)}"
            )
    inits = [_member_init(c, device) for c in cfgs]
    _, actor, critic, fused = inits[0]
    first = inits[0][0]
    stacked = torch.stack([s.exclude("meta").clone() for s, *_ in inits], dim=0)
    del inits
    state = TensorDict({k: stacked[k] for k in stacked.keys()}, batch_size=[])
    state["hp"] = _hp(cfgs, device)
    meta = first["meta"].clone()
    meta["config_json"] = json_tensor(cfg.to_dict())
    meta["population_json"] = json_tensor(pop_meta)
    state["meta"] = meta
    members, num_envs, num_steps = len(cfgs), cfg.num_envs, cfg.num_steps

    step = make_population_step(fused, actor, cfg.compile)
    values_and_gae = make_values_and_gae(critic, cfg.compile)
    update = make_population_update(
        actor,
        critic,
        epochs=cfg.epochs,
        minibatches=cfg.minibatches,
        clip_vloss=cfg.clip_vloss,
        norm_adv=cfg.norm_adv,
        compile=cfg.compile,
    )

    # -- RESUME ----------------------------------------------------------------------------------
    log = MetricsLog(run_dir / "metrics.csv")
    if saved is not None:
        ckpt.check_compatible(state, saved, source=str(path))
        write_back(state.exclude("meta"), saved.exclude("meta"))
        state["meta"] = saved["meta"]
        log.truncate_after(int(state["counters", "frames"][0]))
        _say(cfg, f"tdppo: resumed population {run_dir} at {int(state['counters', 'frames'][0])}")
    else:
        _say(cfg, f"tdppo: training {members} {cfg.env} agents for {cfg.frames} frames each")

    # -- LOOP ------------------------------------------------------------------------------------
    per_iter = cfg.batch_size
    total_iters = math.ceil(cfg.frames / per_iter)
    ckpt_iters = max(1, round(cfg.checkpoint_every / per_iter)) if cfg.checkpoint_every else 0
    root = state["rng", "key"]
    policy_key = trand.fold_in(root, STREAMS["policy"])  # [M]
    perm_key = trand.fold_in(root, STREAMS["minibatch"])  # [M]
    env_key = state["env", "module", "rng_key"]  # [M]
    hp = state["hp"]
    t_start = time.perf_counter()
    frames_start = int(state["counters", "frames"][0])
    last_saved = frames_start if saved is not None else -1
    it = int(state["counters", "updates"][0])
    steps_t = torch.arange(num_steps, device=device)
    first_call = True
    carry_keys = [k for k in state["env"].keys() if k != "module"]
    while it < total_iters:
        c = state["counters"]
        # COLLECT: T vmapped vector steps over plain dicts, no host sync
        with torch.no_grad():
            keys = trand.fold_in(policy_key.unsqueeze(-1), c["steps"].unsqueeze(-1) + steps_t)
            carry = {k: state["env", k] for k in carry_keys}
            tstate, policy = state["transforms"].to_dict(), state["policy"].to_dict()
            out = []
            for t in range(num_steps):
                carry, tstate, trans = step(carry, tstate, policy, keys[:, t], env_key)
                out.append(trans)
            stack = pytree.tree_map(lambda *xs: torch.stack(xs, dim=2), *out)
            batch = TensorDict(stack, batch_size=[members, num_envs, num_steps])
            write_back(state["env"].select(*carry_keys), TensorDict(carry, batch_size=[members]))
            write_back(state["transforms"], TensorDict(tstate, batch_size=[members]))
            # VALUES and GAE, each member with its own gamma and lambda
            value, adv, target = values_and_gae(
                state["value"].to_dict(),
                batch["observation"],
                batch["next", "observation"],
                batch["next", "reward"],
                batch["next", "terminated"],
                batch["next", "done"],
                hp["gamma"],
                hp["gae_lambda"],
            )
            if first_call and cfg.compile:
                _check_captured(step=step, values_and_gae=values_and_gae)
        batch["state_value"] = value
        batch["advantage"] = adv
        batch["value_target"] = target
        flat = batch.reshape(members, -1)
        # UPDATE: vmapped minibatch steps, each member with its own shuffles and hp
        lr_scale = 1.0
        if cfg.anneal_frames:
            lr_scale = max(1.0 - float(c["frames"][0]) / cfg.anneal_frames, 0.0)
        live_hp = _step_hp(hp, lr_scale)
        params = state.select("policy", "value")
        new_params, new_opt, metrics = update(
            params, state["optimizer"], flat, trand.fold_in(perm_key, c["updates"]), live_hp
        )
        write_back(params, new_params)
        write_back(state["optimizer"], new_opt)
        if first_call and cfg.compile:
            _check_captured(update=update)
        first_call = False
        done = batch["next", "done"]
        n_done = done.sum((1, 2, 3))
        c["frames"] += per_iter
        c["steps"] += num_steps
        c["updates"] += 1
        c["episodes"] += n_done
        it += 1
        # LOG: one host sync per logged update, one row per member
        if it % cfg.log_every == 0 or it == total_iters:
            ep_ret = (batch["next", "episode_reward"] * done).sum((1, 2, 3)) / n_done.clamp(min=1)
            _log_rows(log, cfgs, sweep, state, ep_ret, n_done, live_hp, metrics, t_start,
                      frames_start)  # fmt: skip
        # CHECKPOINT at rollout boundaries
        if ckpt_iters and it % ckpt_iters == 0 and it < total_iters:
            _save(state, run_dir, cfg)
            last_saved = int(c["frames"][0])

    # -- FINISH ----------------------------------------------------------------------------------
    if last_saved != int(state["counters", "frames"][0]):
        path = _save(state, run_dir, cfg)
    log.close()
    _say(cfg, f"tdppo: population of {members} in {run_dir}")
    return state


def _check_captured(**fns) -> None:
    """Raise if a compiled function captured no graph (it would silently run eagerly)."""
    for name, fn in fns.items():
        if not captured(fn):
            raise RuntimeError(
                f"torch.compile of the vmapped {name} captured no graph and would run "
                "eagerly; train with compile=False, or report this with your torch version"
            )


def _log_rows(log, cfgs, sweep, state, ep_ret, n_done, hp, metrics, t_start, frames_start):
    c = state["counters"]
    host = {
        "frames": c["frames"].tolist(),
        "episodes": c["episodes"].tolist(),
        "ep_ret": ep_ret.tolist(),
        "n_done": n_done.tolist(),
        "lr": hp["lr"].tolist(),
        **{k: metrics[k].tolist() for k in ppo.METRICS},
    }
    elapsed = time.perf_counter() - t_start
    updates = int(c["updates"][0])
    total = sum(f - frames_start for f in host["frames"])
    for m, mc in enumerate(cfgs):
        row = {
            "member": m,
            "seed": mc.seed,
            **{f"sweep_{k}": getattr(mc, k) for k in sweep},
            "frames": host["frames"][m],
            "updates": updates,
            "time_s": elapsed,
            "sps": total / max(elapsed, 1e-9),
            "episode_return_mean": host["ep_ret"][m] if host["n_done"][m] else float("nan"),
            "episodes": host["episodes"][m],
            "lr": host["lr"][m],
            **{k: host[k][m] for k in ppo.METRICS},
        }
        log.write(row)


def _save(state: TensorDict, run_dir: Path, cfg: Config) -> Path:
    state["meta", "saved_unix"] = torch.tensor(time.time(), dtype=torch.float64)
    return ckpt.save_checkpoint(
        run_dir,
        state,
        frames=int(state["counters", "frames"][0]),
        config=cfg.to_dict(),
        keep=cfg.keep,
    )
