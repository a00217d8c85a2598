"""The one driver: resume, loop over the train step, guard, log, checkpoint, evaluate.

Impure by nature (files, logging, signals); the training itself is the pure
``step(state) -> (new_state, metrics)`` of :mod:`tdppo.learner`, for a single agent and for a
population alike (a population is the same step with a leading member dimension). Read top to
bottom::

    SETUP     config, device, threads, run directory (one writer: an advisory lock)
    RESUME    read and verify the latest intact checkpoint before building anything
    STATE     fresh state and components (tdppo.setup), then the checkpoint copied in
    LOOP      step -> guard (one host sync) -> state.update_(new_state) -> log -> checkpoint
              (SIGTERM / SIGINT: finish the update, checkpoint, exit 143 / 130)
    FINISH    final checkpoint, evaluation with frozen statistics
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tensordict import TensorDict

from tdppo import checkpoint as ckpt
from tdppo import jit, ppo
from tdppo.config import RESUME_MUTABLE, Config, config_diff
from tdppo.distributed import (
    Shards,
    any_process,
    barrier,
    close_shards,
    gather_envs,
    init_shards,
    slice_envs,
)
from tdppo.evaluation import evaluate
from tdppo.learner import make_train_step
from tdppo.metrics import MetricsLog, Progress
from tdppo.population import is_population, member_configs, population_configs, population_meta
from tdppo.runlock import RunLock
from tdppo.setup import (
    Components,
    default_run_dir,
    init_population,
    init_state,
    resolve_device,
    set_threads,
)
from tdppo.signals import Preempted, StopOnSignal
from tdppo.state import json_tensor, tensor_json

__all__ = ["train", "EXACTNESS_FIELDS"]

EXACTNESS_FIELDS = ("compile", "cudagraphs", "device", "threads")
"""Fields that may change on resume but change the arithmetic: typed on a resume, the run goes
on, and bit-exactness with the uninterrupted run is no longer promised (said on stderr and in
metrics.csv)."""


def _say(cfg: Config, msg: str) -> None:
    if not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)


def _warn(msg: str) -> None:  # said even with --quiet: the user must know
    print(f"tdppo: {msg}", file=sys.stderr, flush=True)


def train(
    config: Config | None = None,
    *,
    seeds: Sequence[int] | None = None,
    sweep: dict[str, Sequence[float]] | None = None,
    **overrides,
) -> TensorDict:
    """Train PPO as ``config`` says; returns the final TrainState TensorDict.

    Args:
        config: every hyperparameter (:class:`tdppo.Config`); ``overrides`` replace fields.
        seeds, sweep: a population (vmapped, one process): one member per
            ``product(*sweep.values(), seeds)`` (:func:`tdppo.population.member_configs`).
            On resume they may be left out: the run's own members continue.

    Writes ``run_dir/metrics.csv`` and checkpoints ``run_dir/checkpoints/<frames>/``. With
    ``config.resume`` it continues ``run_dir`` from its latest intact checkpoint; on CPU the
    result is bit-for-bit the run that was never interrupted. SIGTERM or SIGINT ends the run
    after the current update with a checkpoint (:class:`tdppo.signals.Preempted`).
    """
    # -- SETUP -----------------------------------------------------------------------------------
    cfg = dataclasses.replace(config or Config(), **overrides).validate()
    device = resolve_device(cfg.device)
    if cfg.cudagraphs and (device.type != "cuda" or not cfg.compile):
        raise ValueError("--cudagraphs needs a CUDA device and --compile")
    if cfg.resume and not cfg.run_dir:
        raise ValueError("--resume needs --run-dir (the run to continue)")
    members = pop_meta = None  # a population: member configs, and what meta records of them
    if seeds is not None or sweep:
        seeds, sweep = list(seeds if seeds is not None else [cfg.seed]), dict(sweep or {})
        members = member_configs(cfg, seeds, sweep)
        pop_meta = population_meta(seeds, sweep, members)
    shards = init_shards(cfg.shards, cfg.num_envs, device)
    try:
        return _train(cfg, device, members, pop_meta, shards)
    finally:
        close_shards(shards)


def _train(cfg: Config, device, members, pop_meta, shards: Shards) -> TensorDict:
    if members is not None and shards.count > 1:
        raise ValueError("a population runs in one process with --shards 1")
    if shards.world > 1 and not cfg.run_dir:
        raise ValueError("several processes need one --run-dir (their shared run directory)")
    if shards.world > 1 and cfg.compile:
        # Collectives inside inductor's CPU graphs (gloo) corrupted memory here (torch 2.13):
        # several processes run the step eagerly until that is proven safe.
        if shards.rank == 0:
            _warn("several processes run eagerly: --compile is not applied under torchrun yet")
        cfg = dataclasses.replace(cfg, compile=False)
    run_dir = Path(cfg.run_dir or default_run_dir(cfg, len(members) if members else None))
    if _restarted() and ckpt.list_checkpoints(run_dir):
        cfg = dataclasses.replace(cfg, resume=True)  # torchrun --max-restarts: continue the run
    if cfg.resume and not run_dir.is_dir():
        raise FileNotFoundError(f"--resume: no run directory {run_dir}")
    set_threads(cfg.threads, device)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir) if shards.rank == 0 else contextlib.nullcontext()
    try:
        with lock, StopOnSignal() as stop:
            return _run(cfg, device, run_dir, members, pop_meta, stop, shards)
    except BaseException:
        if created and shards.rank == 0 and not any(p.name != ".lock" for p in run_dir.iterdir()):
            for p in run_dir.iterdir():
                p.unlink()
            run_dir.rmdir()  # a fresh run that failed before writing anything leaves nothing
        raise


def _restarted() -> bool:
    """Whether torchrun restarted this worker (``--max-restarts``) after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def _run(cfg, device, run_dir: Path, members, pop_meta, stop, shards: Shards) -> TensorDict:
    lead = shards.rank == 0  # the process that writes files and talks
    # -- RESUME: read and verify before building anything ---------------------------------------
    saved = skipped = path = None
    changed: list[str] = []
    if not cfg.resume and ckpt.list_checkpoints(run_dir):
        raise ValueError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose "
            "another --run-dir (nothing was overwritten)"
        )
    if cfg.resume:
        path, skipped = ckpt.resolve(run_dir)
        for bad, why in skipped if lead else ():
            _warn(f"skipping damaged checkpoint {bad}: {why}")
        saved = ckpt.load_checkpoint(path, device=device)
        saved_cfg = ckpt.read_manifest(path)["config"]
        diff = config_diff(saved_cfg, cfg)
        if is_population(saved):
            saved_pop = tensor_json(saved["meta", "population_json"])
            if pop_meta is None:
                pop_meta = saved_pop
                members = population_configs(saved)
                members = [dataclasses.replace(m, **_mutable(cfg)) for m in members]
            elif saved_pop != pop_meta:
                diff.append("seeds / sweep (the population's members)")
        elif pop_meta is not None:
            diff.append("population: the checkpoint holds a single agent")
        if diff:
            raise ValueError(
                f"cannot resume {run_dir} with a different config; fields that cannot change "
                f"mid-run differ: {', '.join(diff)}"
            )
        changed = [
            f"{k}: {saved_cfg.get(k)!r} -> {getattr(cfg, k)!r}"
            for k in EXACTNESS_FIELDS
            if k in saved_cfg and saved_cfg[k] != getattr(cfg, k)
        ]
    # -- STATE -----------------------------------------------------------------------------------
    if members is not None:
        state, parts = init_population(members, cfg, pop_meta, device)
    else:
        state, parts = init_state(cfg, device, shards=shards)
    step = make_train_step(cfg, parts, members=members is not None, shards=shards)
    if not lead:
        cfg = dataclasses.replace(cfg, quiet=True, eval_episodes=0)
    log = MetricsLog(
        run_dir / "metrics.csv" if lead else None,
        tensorboard_dir=run_dir / "tb" if cfg.tensorboard and lead else None,
    )
    if saved is not None:
        saved = slice_envs(saved, shards, cfg.num_envs)
        ckpt.check_compatible(state, saved, source=str(path))
        state.exclude("meta").update_(saved.exclude("meta"))
        state["meta"] = saved["meta"]
        frames_at = _frames(state)
        _restore_env(parts, state, frames_at)
        log.truncate_after(frames_at)
        if skipped:
            log.note(
                f"resumed from {path.name} after skipping damaged: {[p.name for p, _ in skipped]}",
                frames=frames_at,
            )
        if changed:
            msg = (
                f"resumed with {', '.join(changed)}: the run goes on, but bit-exactness with the "
                "uninterrupted run is no longer promised"
            )
            if lead:
                _warn(msg)
            log.note(msg, frames=frames_at)
        _say(cfg, f"tdppo: resumed {run_dir} at {frames_at} frames")
    else:
        who = f"{len(members)} {cfg.env} agents" if members else cfg.env
        _say(cfg, f"tdppo: training {who} for {cfg.frames} frames in {run_dir}")
    state["meta", "config_json"] = json_tensor(cfg.to_dict())  # this segment's effective config

    # -- LOOP ------------------------------------------------------------------------------------
    per_iter = cfg.batch_size
    total_iters = math.ceil(cfg.frames / per_iter)
    ckpt_iters = max(1, round(cfg.checkpoint_every / per_iter)) if cfg.checkpoint_every else 0
    progress = Progress(total_iters * per_iter, quiet=cfg.quiet)
    t_start = time.perf_counter()
    frames_start = _frames(state)
    last_saved = frames_start if saved is not None else -1
    it = int(state["counters", "updates"].reshape(-1)[0])
    first = True
    while it < total_iters:
        ahead = _compile_ahead(cfg, parts, step, state) if first else contextlib.nullcontext()
        with jit.guards_checked(first or not cfg.compile), ahead:  # iteration 1 checks guards
            new_state, metrics = step(state)
        if first and cfg.compile:
            _check_captured(step)
        first = False
        it += 1
        logging = it % cfg.log_every == 0 or it == total_iters
        host = _to_host(metrics, new_state["counters"], logging)  # the one host sync
        _guard(host, _frames(state))
        state.update_(new_state)
        if logging:
            rows = _rows(host, members, pop_meta, it, time.perf_counter() - t_start, frames_start)
            for row in rows:
                log.write(row)
            progress.update(rows[0]["frames"], {**rows[0], "sps": rows[-1]["sps"]})
        if any_process(stop.requested is not None, shards):
            signum = stop.requested or signal.SIGTERM  # another process was signalled
            saved_path = _save(state, run_dir, cfg, parts, shards)
            progress.close()
            log.note(f"stopped by {signal.Signals(signum).name}", frames=_frames(state))
            log.close()
            raise Preempted(signum, frames=_frames(state), checkpoint=saved_path, run_dir=run_dir)
        if ckpt_iters and it % ckpt_iters == 0 and it < total_iters:
            _save(state, run_dir, cfg, parts, shards)
            last_saved = _frames(state)

    # -- FINISH ----------------------------------------------------------------------------------
    progress.close()
    if last_saved != _frames(state):
        path = _save(state, run_dir, cfg, parts, shards)
    else:
        path = run_dir / "checkpoints"
    log.close()
    _say(cfg, f"tdppo: run in {run_dir}, checkpoint {path}")
    if cfg.eval_episodes and not cfg.quiet:
        for m in range(len(members)) if members else [None]:
            res = evaluate(run_dir, episodes=cfg.eval_episodes, seed=cfg.seed + 10_000, member=m)
            who = "" if m is None else f" (member {m})"
            _say(
                cfg,
                f"tdppo: eval mean return over {res['episodes']} episodes{who}: "
                f"{res['mean_return']:.1f}",
            )
    return state


def _mutable(cfg: Config) -> dict:
    return {k: getattr(cfg, k) for k in RESUME_MUTABLE}


def _frames(state: TensorDict) -> int:
    return int(state["counters", "frames"].reshape(-1)[0])


def _compile_ahead(cfg: Config, parts: Components, step, state: TensorDict):
    """The first iteration's compiled parts (env step, minibatch step) compile side by side
    (:func:`tdppo.jit.compile_ahead`, a dry run of the step on fake tensors); not with the gym
    backend, whose step drives live simulators."""
    if cfg.compile and hasattr(parts.collector, "env_step"):
        return jit.compile_ahead(step, state)
    return contextlib.nullcontext()


def _check_captured(step) -> None:
    """Raise if a compiled part captured no graph (it would silently run eagerly)."""
    for name, fn in step.compiled_parts.items():
        if getattr(fn, "__tdppo_code__", None) is not None and not jit.captured(fn):
            raise RuntimeError(
                f"compiling the {name} captured no graph and it would run eagerly; train "
                "with --no-compile, or report this with your torch version"
            )


def _to_host(metrics: TensorDict, counters: TensorDict, logging: bool) -> dict:
    """One device-to-host copy per update: the guard flags, and the metrics when logging."""
    keep = ["rollout_finite", "params_finite"]
    if not logging:
        return metrics.select(*keep).to("cpu").to_dict()
    td = TensorDict({"m": metrics, "c": counters.clone()}, batch_size=metrics.batch_size)
    host = td.to("cpu").to_dict()
    return {**host["m"], "counters": host["c"]}


def _guard(host: dict, frames: int) -> None:
    """Stop before a non-finite rollout or a diverged update is copied in or saved."""
    if not bool(host["rollout_finite"].all()):
        raise ValueError(
            f"non-finite observation or reward in the rollout after {frames} frames; the "
            "normalizer statistics were left untouched and no checkpoint was written"
        )
    if not bool(host["params_finite"].all()):
        raise ValueError(
            f"the update produced non-finite parameters after {frames} frames (diverged); "
            "the last checkpoint is intact and nothing was saved"
        )


def _rows(host, members, pop_meta, updates: int, elapsed: float, frames_start: int) -> list:
    """metrics.csv rows: one, or one per member (``member``, ``seed``, ``sweep_<field>``)."""
    c = host["counters"]
    frames = c["frames"].reshape(-1).tolist()
    episodes = c["episodes"].reshape(-1).tolist()
    n_done = host["episodes_done"].reshape(-1).tolist()
    ret = host["episode_return_mean"].reshape(-1).tolist()
    lr = host["lr"].reshape(-1).tolist()
    m = {k: host[k].reshape(-1).tolist() for k in ppo.METRICS}
    sps = sum(f - frames_start for f in frames) / max(elapsed, 1e-9)
    swept = list(pop_meta["sweep"]) if pop_meta else []
    rows = []
    for i in range(len(frames)):
        head = {}
        if members is not None:
            head = {"member": i, "seed": members[i].seed}
            head.update({f"sweep_{k}": getattr(members[i], k) for k in swept})
        rows.append(
            {
                **head,
                "frames": frames[i],
                "updates": updates,
                "time_s": elapsed,
                "sps": sps,
                "episode_return_mean": ret[i] if n_done[i] else float("nan"),
                "episodes": episodes[i],
                "lr": lr[i],
                **{k: v[i] for k, v in m.items()},
            }
        )
    return rows


def _restore_env(parts: Components, state: TensorDict, frames: int) -> None:
    """After a resume: simulators outside the state (gym backend) get theirs back, or, when
    they cannot, restart their episodes (with a warning and ``meta/resume_reset_episodes``)."""
    base = parts.env.base_env
    if hasattr(base, "restore_state"):
        if base.restore_state() is not False:
            return
    if not hasattr(parts.collector, "env_step"):  # the gym backend
        _restart_episodes(parts, state, frames)


def _restart_episodes(parts: Components, state: TensorDict, frames: int) -> None:
    env = parts.env
    _warn(
        f"warning: backend 'gym' does not capture this simulator's state; the resumed "
        f"run starts new episodes at {frames} frames (not bit-exact)"
    )
    norms = [
        t for t in getattr(env.transform, "transforms", [env.transform]) if hasattr(t, "freeze")
    ]
    was = [bool(t.frozen) for t in norms]
    for t in norms:
        t.freeze()
    carry = env.reset()
    for t, f in zip(norms, was):
        if not f:
            t.unfreeze()
    keys = [k for k in state["env"].keys() if k != "module"]
    state["env"].update_(TensorDict({k: carry[k] for k in keys}, batch_size=[]))
    prev = state["meta"].get("resume_reset_episodes", torch.zeros((), dtype=torch.int64))
    state["meta", "resume_reset_episodes"] = prev + 1


def _save(state: TensorDict, run_dir: Path, cfg: Config, parts: Components, shards: Shards) -> Path:
    """Write a checkpoint (several processes: their envs gathered, rank 0 writes)."""
    base = parts.env.base_env
    if hasattr(base, "capture_state"):
        base.capture_state()  # simulators outside the state (gym backend) into its buffers
    state["meta", "saved_unix"] = torch.tensor(time.time(), dtype=torch.float64)
    full = gather_envs(state, shards)
    frames = _frames(state)
    path = run_dir / "checkpoints" / f"{frames:012d}"
    if shards.rank == 0:
        path = ckpt.save_checkpoint(
            run_dir, full, frames=frames, config=cfg.to_dict(), keep=cfg.keep
        )
    barrier(shards)  # no process runs ahead of a checkpoint that may be its resume point
    return path
